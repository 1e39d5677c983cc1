"""Per-vhost limits (RabbitMQ's /api/vhost-limits paths) and the node's resource alarm
thresholds, settable at runtime like `rabbitmqctl set_vm_memory_high_watermark` and
`set_disk_free_limit` (WarrenMQ's own paths: RabbitMQ has no HTTP endpoint for these)."""

from __future__ import annotations

from aiohttp import web

from node.http.api_conventions import (
    ADMINISTRATOR,
    MONITORING,
    bad_request,
    body,
    broker_of,
    json_response,
    name,
    no_content,
    require,
    vhost_or_404,
)

routes = web.RouteTableDef()
LIMIT_NAMES = ("max-connections", "max-queues")


def _limits_json(broker, vhosts) -> list[dict]:
    return [{"vhost": vh.name, "value": dict(vh.limits)} for vh in vhosts if vh.limits]


@routes.get("/api/vhost-limits")
async def all_limits(request: web.Request) -> web.Response:
    require(request, MONITORING)
    b = broker_of(request)
    return json_response(_limits_json(b, b.runtime.vhosts.values()))


@routes.get("/api/vhost-limits/{vhost}")
async def vhost_limits(request: web.Request) -> web.Response:
    require(request, MONITORING)
    return json_response(_limits_json(broker_of(request), [vhost_or_404(request)]))


@routes.put("/api/vhost-limits/{vhost}/{limit}")
async def put_limit(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    vh = vhost_or_404(request)
    limit = name(request, "limit")
    if limit not in LIMIT_NAMES:
        raise bad_request(f"unknown vhost limit '{limit}'; known: {', '.join(LIMIT_NAMES)}")
    data = await body(request, "value")
    value = data["value"]
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request("value must be an integer (negative: no limit)")
    limits = dict(vh.limits)
    limits[limit] = value
    await broker_of(request).definitions.set_vhost_limits(vh.name, limits)
    return no_content()


@routes.delete("/api/vhost-limits/{vhost}/{limit}")
async def delete_limit(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    vh = vhost_or_404(request)
    limits = dict(vh.limits)
    limits.pop(name(request, "limit"), None)
    await broker_of(request).definitions.set_vhost_limits(vh.name, limits)
    return no_content()


@routes.get("/api/resources")
async def resources(request: web.Request) -> web.Response:
    require(request, MONITORING)
    r = broker_of(request).resources
    return json_response(r.status() if r is not None else {})


@routes.put("/api/resources/vm-memory-high-watermark")
async def set_watermark(request: web.Request) -> web.Response:
    """{"fraction": 0.4} of the machine's RAM, or {"absolute": bytes}."""
    require(request, ADMINISTRATOR)
    data = await body(request)
    r = broker_of(request).resources
    if r is None:
        raise bad_request("resource monitor not running")
    if "absolute" in data:
        r.set_memory_watermark(absolute=int(data["absolute"]))
    elif "fraction" in data:
        r.set_memory_watermark(fraction=float(data["fraction"]))
    else:
        raise bad_request("key missing: fraction or absolute")
    return json_response(r.status())


@routes.put("/api/resources/disk-free-limit")
async def set_disk_limit(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    data = await body(request, "bytes")
    r = broker_of(request).resources
    if r is None:
        raise bad_request("resource monitor not running")
    r.set_disk_free_limit(int(data["bytes"]))
    return json_response(r.status())
