"""What every management handler shares: JSON in and out, RabbitMQ-style errors, path names,
user-tag checks, and the list conventions of RabbitMQ's API (sort, columns, pagination)."""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import re
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from node.runtime.broker import Broker
from node.runtime.records import UserRecord

# RabbitMQ's user tags, from the most to the least privileged
ADMINISTRATOR, MONITORING, POLICYMAKER, MANAGEMENT = (
    "administrator", "monitoring", "policymaker", "management")
MANAGEMENT_TAGS = {ADMINISTRATOR, MONITORING, POLICYMAKER, MANAGEMENT}


class HTTPError(Exception):
    """Raised anywhere in a handler; the middleware turns it into {"error", "reason"}."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason = status, error, reason


def bad_request(reason: str) -> HTTPError:
    return HTTPError(400, "bad_request", reason)


def not_found() -> HTTPError:
    return HTTPError(404, "Object Not Found", "Not Found")


def not_authorised(reason: str) -> HTTPError:
    return HTTPError(401, "not_authorised", reason)


def error_response(status: int, error: str, reason: str) -> web.Response:
    return web.json_response({"error": error, "reason": reason}, status=status)


def to_json_value(v: Any) -> Any:
    """AMQP field values (bytes, Decimal, datetime, bytearray) as JSON can carry them."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        raw = bytes(v)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, datetime.datetime):
        return int(v.timestamp())
    if isinstance(v, dict):
        return {str(k): to_json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_json_value(x) for x in v]
    return v


def _dumps(value: Any) -> str:
    return json.dumps(value, default=lambda v: to_json_value(v) if not isinstance(
        v, (dict, list, tuple)) else str(v))


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.json_response(to_json_value(value), status=status, dumps=_dumps)


def created_or_updated(existed: bool) -> web.Response:
    return web.Response(status=204 if existed else 201)


def no_content() -> web.Response:
    return web.Response(status=204)


def name(request: web.Request, key: str) -> str:
    # vhost "/" arrives as %2F; aiohttp leaves it encoded inside one path segment
    return unquote(request.match_info[key])


async def body(request: web.Request, *mandatory: str) -> dict:
    """The JSON object of a PUT/POST; 400 when it is not JSON, not an object, or lacks a
    mandatory key (RabbitMQ: "key missing: <key>")."""
    if not request.can_read_body:
        data: Any = {}
    else:
        raw = await request.read()
        try:
            data = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError) as e:
            raise bad_request(f"invalid JSON: {e}") from None
    if not isinstance(data, dict):
        raise bad_request("expected a JSON object")
    for key in mandatory:
        if key not in data:
            raise bad_request(f"key missing: {key}")
    return data


def tags_of(user: UserRecord) -> set[str]:
    return set(user.tags)


def require(request: web.Request, *tags: str) -> None:
    """The user needs one of `tags` (administrator always passes)."""
    have = tags_of(request["user"])
    if ADMINISTRATOR in have or have & set(tags):
        return
    wanted = tags[0] if tags else ADMINISTRATOR
    raise not_authorised(f"Not {wanted} user")


def sees_everything(request: web.Request) -> bool:
    """administrator and monitoring see every vhost, connection and channel."""
    return bool(tags_of(request["user"]) & {ADMINISTRATOR, MONITORING})


def parse_tags(raw: Any) -> list[str]:
    """User tags as RabbitMQ accepts them: a list, or one comma/space separated string."""
    if raw is None:
        return []
    if isinstance(raw, str):
        return [t for t in re.split(r"[,\s]+", raw) if t]
    if isinstance(raw, list):
        return [str(t) for t in raw if str(t)]
    raise bad_request("tags must be a list or a comma-separated string")


def as_bool(value: Any, key: str, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise bad_request(f"'{key}' must be a boolean, got {value!r}")


# --- lists: sort, sort_reverse, columns, name/use_regex, pagination ----------------------
def _path_get(item: dict, dotted: str) -> Any:
    cur: Any = item
    for part in dotted.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _keep_columns(item: dict, columns: list[str]) -> dict:
    out: dict = {}
    for col in columns:
        parts = col.split(".")
        value = _path_get(item, col)
        if value is None and col.split(".")[0] not in item:
            continue
        cur = out
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
    return out


def list_response(request: web.Request, items: list[dict]) -> web.Response:
    """RabbitMQ's list conventions.  With `page`, the answer is the paginated envelope
    {items, page, page_size, page_count, item_count, total_count, filtered_count}."""
    qs = request.query
    total = len(items)
    pattern = qs.get("name")
    if pattern:
        if qs.get("use_regex") == "true":
            try:
                rx = re.compile(pattern)
            except re.error as e:
                raise bad_request(f"invalid regex: {e}") from None
            items = [i for i in items if rx.search(str(i.get("name", "")))]
        else:
            items = [i for i in items if pattern in str(i.get("name", ""))]
    sort = qs.get("sort")
    if sort:
        def key(i: dict) -> tuple:
            v = _path_get(i, sort)
            return (v is None, str(type(v)), v if isinstance(v, (int, float, str)) else str(v))
        items = sorted(items, key=key, reverse=qs.get("sort_reverse") == "true")
    columns = [c for c in qs.get("columns", "").split(",") if c]
    if columns:
        items = [_keep_columns(i, columns) for i in items]
    if "page" not in qs:
        return json_response(items)
    try:
        page = int(qs["page"])
        page_size = int(qs.get("page_size", "100"))
    except ValueError:
        raise bad_request("page and page_size must be integers") from None
    if page < 1 or not 1 <= page_size <= 500:
        raise bad_request("page must be >= 1 and page_size between 1 and 500")
    filtered = len(items)
    page_count = max(1, -(-filtered // page_size))
    chunk = items[(page - 1) * page_size:page * page_size]
    return json_response({"filtered_count": filtered, "item_count": len(chunk),
                          "items": chunk, "page": page, "page_count": page_count,
                          "page_size": page_size, "total_count": total})


# --- who may see and touch which vhost ---------------------------------------------------
def broker_of(request: web.Request) -> Broker:
    return request.app["broker"]


def stats_of(request: web.Request) -> Any:
    return request.app["stats"]


def vhost_or_404(request: web.Request, key: str = "vhost") -> Any:
    vh = broker_of(request).runtime.vhosts.get(name(request, key))
    if vh is None:
        raise not_found()
    return vh


def can_use_vhost(request: web.Request, vhost: str) -> bool:
    user: UserRecord = request["user"]
    return sees_everything(request) or broker_of(request).access.can_access_vhost(user.name, vhost)


def visible_vhosts(request: web.Request) -> list:
    """The vhosts a list covers: the one in the path (404 if absent, 401 if not allowed),
    or every vhost this user may see."""
    broker = broker_of(request)
    if "vhost" in request.match_info:
        vh = vhost_or_404(request)
        if not can_use_vhost(request, vh.name):
            raise not_authorised("User not authorised to access virtual host")
        return [vh]
    return [vh for vh in broker.runtime.vhosts.values() if can_use_vhost(request, vh.name)]


def check_permission(request: web.Request, vhost: str, perm: str, kind: str,
                     resource: str) -> None:
    """The AMQP permission check (configure/write/read regexes) for an API action that
    mirrors an AMQP one, e.g. declaring a queue needs configure on its name."""
    user = request["user"].name
    if not broker_of(request).access.permitted(user, vhost, perm, resource):
        raise not_authorised(f"ACCESS_REFUSED - {perm} access to {kind} '{resource}' in vhost "
                             f"'{vhost}' refused for user '{user}'")
