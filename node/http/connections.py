"""/api/connections, /api/channels, /api/consumers: what clients are doing right now.

administrator and monitoring users see everything; other management users see only their
own connections and channels, as in RabbitMQ."""

from __future__ import annotations

from typing import Any, Iterator

from aiohttp import web

from node.amqp import errors
from node.http.api_conventions import (
    broker_of,
    json_response,
    list_response,
    name,
    no_content,
    not_found,
    sees_everything,
    stats_of,
    visible_vhosts,
)
from node.http.rabbitmq_json import channel_json, channel_name, connection_json, consumer_json

routes = web.RouteTableDef()

FORCED_TEXT = "CONNECTION_FORCED - Closed via management plugin"


def _connections(request: web.Request, vhost: str | None = None) -> Iterator[Any]:
    everything = sees_everything(request)
    me = request["user"].name
    for c in list(broker_of(request).runtime.connections):
        if not everything and c.user != me:
            continue
        if vhost is not None and (c.vhost is None or c.vhost.name != vhost):
            continue
        yield c


def _connection(request: web.Request) -> Any:
    wanted = name(request, "name")
    for c in _connections(request):
        if c.name == wanted:
            return c
    raise not_found()


@routes.get("/api/connections")
async def list_connections(request: web.Request) -> web.Response:
    b, stats = broker_of(request), stats_of(request)
    return list_response(request, [connection_json(b, stats, c) for c in _connections(request)])


@routes.get("/api/vhosts/{vhost}/connections")
async def list_vhost_connections(request: web.Request) -> web.Response:
    b, stats = broker_of(request), stats_of(request)
    vh = visible_vhosts(request)[0]
    return list_response(request, [connection_json(b, stats, c)
                                   for c in _connections(request, vh.name)])


@routes.get("/api/connections/username/{user}")
async def list_user_connections(request: web.Request) -> web.Response:
    b, stats = broker_of(request), stats_of(request)
    user = name(request, "user")
    return list_response(request, [connection_json(b, stats, c) for c in _connections(request)
                                   if c.user == user])


@routes.get("/api/connections/{name}")
async def get_connection(request: web.Request) -> web.Response:
    return json_response(connection_json(broker_of(request), stats_of(request),
                                         _connection(request)))


@routes.delete("/api/connections/{name}")
async def close_connection(request: web.Request) -> web.Response:
    c = _connection(request)
    reason = request.headers.get("X-Reason")
    text = f"CONNECTION_FORCED - {reason}" if reason else FORCED_TEXT
    # force_close prefixes the code's name itself; hand it only the part after " - "
    c.force_close(errors.CONNECTION_FORCED, text.split(" - ", 1)[1])
    return no_content()


@routes.get("/api/connections/{name}/channels")
async def list_connection_channels(request: web.Request) -> web.Response:
    c = _connection(request)
    b, stats = broker_of(request), stats_of(request)
    return list_response(request, [channel_json(b, stats, c, ch)
                                   for ch in c.stats().channels])


# --- channels -----------------------------------------------------------------------
def _channels(request: web.Request, vhost: str | None = None) -> Iterator[tuple[Any, Any]]:
    for c in _connections(request, vhost):
        for ch in c.stats().channels:
            yield c, ch


@routes.get("/api/channels")
async def list_channels(request: web.Request) -> web.Response:
    b, stats = broker_of(request), stats_of(request)
    return list_response(request, [channel_json(b, stats, c, ch) for c, ch in _channels(request)])


@routes.get("/api/vhosts/{vhost}/channels")
async def list_vhost_channels(request: web.Request) -> web.Response:
    b, stats = broker_of(request), stats_of(request)
    vh = visible_vhosts(request)[0]
    return list_response(request, [channel_json(b, stats, c, ch)
                                   for c, ch in _channels(request, vh.name)])


@routes.get("/api/channels/{channel}")
async def get_channel(request: web.Request) -> web.Response:
    wanted = name(request, "channel")
    for c, ch in _channels(request):
        if channel_name(c, ch) == wanted:
            return json_response(channel_json(broker_of(request), stats_of(request), c, ch))
    raise not_found()


# --- consumers ----------------------------------------------------------------------
@routes.get("/api/consumers")
@routes.get("/api/consumers/{vhost}")
async def list_consumers(request: web.Request) -> web.Response:
    b = broker_of(request)
    allowed = {vh.name for vh in visible_vhosts(request)}
    out = []
    for c in list(b.runtime.connections):
        if c.vhost is None or c.vhost.name not in allowed:
            continue
        for ch in c.stats().channels:
            for consumer in ch.stats().consumers:
                out.append(consumer_json(b, c, ch, consumer))
    return list_response(request, out)
