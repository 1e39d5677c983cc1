"""HTTP basic auth against the broker's users, RabbitMQ's management tags, and the one place
where handler exceptions become JSON errors ({"error": ..., "reason": ...})."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

from node.amqp import errors
from node.amqp.errors import AMQPError
from node.auth import check_password, is_loopback
from node.health import token_matches
from node.http.api_conventions import MANAGEMENT_TAGS, HTTPError, error_response
from node.runtime.records import UserRecord

log = logging.getLogger("warren.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# paths anyone may read: the UI's files, Prometheus scrapes, the API description
PUBLIC_PREFIXES = ("/metrics", "/api/openapi.json", "/static/", "/favicon.ico")
PUBLIC_PATHS = {"/", "/index.html"}

# the node's health token opens these and nothing else
HEALTH_PREFIX = "/api/health/checks/"
HEALTH_USER = UserRecord("(node health token)", tags=("monitoring",))

# AMQP reply codes of definition refusals -> HTTP status
_STATUS_OF_AMQP = {errors.ACCESS_REFUSED: 401, errors.NOT_FOUND: 404, errors.RESOURCE_LOCKED: 400,
                   errors.PRECONDITION_FAILED: 400, errors.NOT_ALLOWED: 400,
                   errors.INTERNAL_ERROR: 503}


def authenticate(broker: Any, header: str,
                 remote: str | None) -> tuple[UserRecord | None, str]:
    """The user named by an `Authorization: Basic` header, or None and why not."""
    if not header.startswith("Basic "):
        return None, "Login failed"
    try:
        username, _, password = base64.b64decode(header[6:], validate=True).decode(
        ).partition(":")
    except (ValueError, UnicodeDecodeError):
        return None, "Login failed"
    u = broker.runtime.records.user(username)
    if u is None or not check_password(password, u.password_hash, u.hashing):
        return None, "Login failed"
    if username == "guest" and broker.access.loopback_only_guest and not is_loopback(remote):
        return None, "guest user can only log in via localhost"
    return u, ""


def _unauthorised(request: web.Request, reason: str) -> web.Response:
    resp = error_response(401, "not_authorised", reason)
    # the UI logs in with its own form: a WWW-Authenticate header would make the browser
    # pop up its native dialog over it
    if request.headers.get("X-Requested-With") != "XMLHttpRequest":
        resp.headers["WWW-Authenticate"] = 'Basic realm="WarrenMQ Management"'
    return resp


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or not path.startswith("/api"):
        return await _guarded(request, handler)
    if path.startswith(HEALTH_PREFIX) and token_matches(
            request.config_dict.get("health_token"), request.headers.get("Authorization", "")):
        request["user"] = HEALTH_USER  # `warren healthcheck` (node/health.py)
        return await _guarded(request, handler)
    user, why = authenticate(request.app["broker"], request.headers.get("Authorization", ""),
                             request.remote)
    if user is None:
        return _unauthorised(request, why)
    if not set(user.tags) & MANAGEMENT_TAGS:
        return _unauthorised(request, "Not management user")
    request["user"] = user
    return await _guarded(request, handler)


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HTTPError as e:
        return error_response(e.status, e.error, e.reason)
    except web.HTTPMethodNotAllowed as e:
        return error_response(405, "Method Not Allowed",
                              f"{e.method} not allowed; allowed: {', '.join(sorted(e.allowed_methods))}")
    except web.HTTPNotFound:
        return error_response(404, "Object Not Found", "Not Found")
    except AMQPError as e:
        status = _STATUS_OF_AMQP.get(e.code, 500)
        error = {400: "bad_request", 401: "not_authorised", 404: "Object Not Found",
                 503: "service_unavailable"}.get(status, "internal_error")
        return error_response(status, error, e.text)
    except json.JSONDecodeError as e:
        return error_response(400, "bad_request", f"invalid JSON: {e}")
