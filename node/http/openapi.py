"""An OpenAPI 3 description of the management API at /api/openapi.json (no auth), built from
the routes the application really serves, so it can never list a path that does not exist."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from node.http.api_conventions import json_response
from node.runtime.broker import VERSION

routes = web.RouteTableDef()

_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")


def _operation(method: str, path: str, handler: Any) -> dict:
    doc = (handler.__doc__ or "").strip().split("\n")[0] or handler.__name__.replace("_", " ")
    op: dict[str, Any] = {
        "summary": doc, "operationId": f"{method.lower()}_{handler.__name__}",
        "tags": [path.split("/")[2] if path.startswith("/api/") else path.strip("/") or "ui"],
        "responses": {"200": {"description": "OK"}, "201": {"description": "Created"},
                      "204": {"description": "No Content"},
                      "400": {"$ref": "#/components/responses/Error"},
                      "401": {"$ref": "#/components/responses/Error"},
                      "404": {"$ref": "#/components/responses/Error"}},
    }
    params = _PARAM.findall(path)
    if params:
        op["parameters"] = [{"name": p, "in": "path", "required": True,
                             "schema": {"type": "string"},
                             "description": "percent-encoded; the vhost / is %2F"
                             if p == "vhost" else ""} for p in params]
    if method in ("PUT", "POST"):
        op["requestBody"] = {"required": False, "content": {"application/json": {
            "schema": {"type": "object"}}}}
    if not path.startswith("/api/") or path == "/api/openapi.json":
        op["security"] = []
    return op


def build(app: web.Application) -> dict:
    paths: dict[str, dict] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        raw = info.get("path") or info.get("formatter") or info.get("prefix")
        if not raw or route.method in ("HEAD", "OPTIONS", "*"):
            continue
        path = _PARAM.sub(lambda m: "{" + m.group(1) + "}", raw)
        paths.setdefault(path, {})[route.method.lower()] = _operation(route.method, raw,
                                                                      route.handler)
    return {
        "openapi": "3.0.3",
        "info": {"title": "WarrenMQ management HTTP API", "version": VERSION,
                 "description": "RabbitMQ-compatible management API: same paths, JSON shapes, "
                                "basic auth and user tags."},
        "servers": [{"url": "/"}],
        "security": [{"basicAuth": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {"basicAuth": {"type": "http", "scheme": "basic"}},
            "schemas": {"Error": {"type": "object", "required": ["error", "reason"],
                                  "properties": {"error": {"type": "string"},
                                                 "reason": {"type": "string"}}}},
            "responses": {"Error": {"description": "An error", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
        },
    }


@routes.get("/api/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """This document."""
    return json_response(build(request.app))
