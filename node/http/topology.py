"""/api/queues, /api/exchanges, /api/bindings: declare, inspect, delete, purge, bind.

An action that mirrors an AMQP method needs the same permission the method would (configure
to declare or delete, read to purge, write and read to bind), as in RabbitMQ."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cluster import shards
from node.amqp.errors import resource_text
from node.exchanges.base import Destination
from node.http.api_conventions import (
    as_bool,
    bad_request,
    body,
    broker_of,
    check_permission,
    json_response,
    list_response,
    name,
    no_content,
    not_found,
    stats_of,
    visible_vhosts,
)
from node.http.proxy import HOP_HEADER, from_owner, owner_list
from node.http.rabbitmq_json import (
    exchange_json,
    properties_key,
    queue_consumer_details,
    queue_json,
    unacked_bytes,
    vhost_bindings,
)
from node.queues import types

routes = web.RouteTableDef()


def _arguments(data: dict) -> dict:
    args = data.get("arguments") or {}
    if not isinstance(args, dict):
        raise bad_request("'arguments' must be a JSON object")
    return args


# --- queues ------------------------------------------------------------------------
@routes.get("/api/queues")
@routes.get("/api/queues/detailed")
@routes.get("/api/queues/{vhost}")
async def list_queues(request: web.Request) -> web.Response:
    b, stats = broker_of(request), stats_of(request)
    items: list[dict] = []
    for vh in visible_vhosts(request):
        if b.runtime.sharded(vh.name):
            items.extend(await _sharded_queues(request, vh))
            continue
        # a vhost another node runs: its queues' live figures are the owner's
        remote = await owner_list(request, vh.name, "/api/queues/{vhost}")
        if remote is not None:
            items.extend(remote)
            continue
        unacked = unacked_bytes(b)
        rows = [queue_json(b, stats, vh.name, q, unacked) for q in list(vh.queues.values())]
        if not b.runtime.owns(vh.name):
            # the owner did not answer: its queues' contents are unknown here, not empty
            why = b.roles.available(vh.name) or (
                f"vhost '{vh.name}' is served by node '{b.runtime.owner_of(vh.name)}', which did "
                "not answer")
            for row in rows:
                row.update(state="down", reason=why, messages=None, messages_ready=None,
                           messages_unacknowledged=None)
        items.extend(rows)
    return list_response(request, items)


async def _sharded_queues(request: web.Request, vh: Any) -> list[dict]:
    """A sharded vhost's queues: each shard's with its owner's live figures (a relayed
    request answers for the shards this node owns only)."""
    b, stats = broker_of(request), stats_of(request)
    relayed = bool(request.headers.get(HOP_HEADER))
    unacked = unacked_bytes(b)
    rows: list[dict] = []
    asked: dict[str, list | None] = {}  # owner node -> its rows
    record = b.runtime.records.vhost(vh.name)
    for unit in shards.units(vh.name, record.shards if record is not None else 1):
        queues = [q for q in list(vh.queues.values()) if q.unit == unit]
        if b.runtime.owns(unit):
            rows.extend(queue_json(b, stats, vh.name, q, unacked) for q in queues)
            continue
        if relayed:
            continue
        owner = b.runtime.owner_of(unit) or ""
        if owner not in asked:
            asked[owner] = await owner_list(request, unit, "/api/queues/{vhost}")
        remote = asked[owner]
        if remote is not None:
            shard = shards.split(unit)[1]
            rows.extend(r for r in remote if r.get("shard") == shard)
            continue
        why = b.roles.available(unit) or (
            f"{shards.label(unit)} is served by node '{owner}', which did not answer")
        for q in queues:
            row = queue_json(b, stats, vh.name, q, unacked)
            row.update(state="down", reason=why, messages=None, messages_ready=None,
                       messages_unacknowledged=None)
            rows.append(row)
    return rows


def queue_of(request: web.Request) -> tuple[Any, Any]:
    vh = visible_vhosts(request)[0]
    q = vh.queues.get(name(request, "name"))
    if q is None:
        raise not_found()
    return vh, q


@routes.get("/api/queues/{vhost}/{name}")
async def get_queue(request: web.Request) -> web.Response:
    vh = visible_vhosts(request)[0]
    q = vh.queues.get(name(request, "name"))
    # live counts and consumers are the owner's (of the queue's shard)
    relayed = await from_owner(request, q.unit if q is not None else vh.name)
    if relayed is not None:
        return relayed
    vh, q = queue_of(request)
    out = queue_json(broker_of(request), stats_of(request), vh.name, q)
    out["consumer_details"] = queue_consumer_details(q)
    return json_response(out)


@routes.put("/api/queues/{vhost}/{name}")
async def put_queue(request: web.Request) -> web.Response:
    data = await body(request)
    vh = visible_vhosts(request)[0]
    qname = name(request, "name")
    if not qname or qname.startswith("amq."):
        raise bad_request(f"queue name '{qname}' contains reserved prefix 'amq.'"
                          if qname else "queue name must not be empty")
    check_permission(request, vh.name, "configure", "queue", qname)
    args = _arguments(data)
    durable = as_bool(data.get("durable"), "durable", True)
    auto_delete = as_bool(data.get("auto_delete"), "auto_delete", False)
    b = broker_of(request)
    args = types.with_default_type(args, b.definitions.default_queue_type(vh.name), durable, False,
                                   auto_delete)
    existing = vh.queues.get(qname)
    if existing is not None:
        b.definitions.check_queue_equivalent(existing, durable, False, auto_delete, args)
        return no_content()
    b.definitions.validate_queue_arguments(args, qname, vh.name, durable, False, auto_delete)
    await b.definitions.declare_queue(vh, qname, durable, None, auto_delete, args)
    return web.Response(status=201)


@routes.delete("/api/queues/{vhost}/{name}")
async def delete_queue(request: web.Request) -> web.Response:
    vh, q = queue_of(request)
    check_permission(request, vh.name, "configure", "queue", q.name)
    if request.query.get("if-unused") == "true" and q.consumer_count:
        raise bad_request(f"PRECONDITION_FAILED - {resource_text('queue', q.name, vh.name)} in use")
    if request.query.get("if-empty") == "true" and (q.message_count or q.unacked):
        raise bad_request(f"PRECONDITION_FAILED - {resource_text('queue', q.name, vh.name)} "
                          "not empty")
    await broker_of(request).definitions.delete_queue(vh, q)
    return no_content()


@routes.delete("/api/queues/{vhost}/{name}/contents")
async def purge_queue(request: web.Request) -> web.Response:
    relayed = await from_owner(request, name(request, "vhost"))
    if relayed is not None:
        return relayed
    vh, q = queue_of(request)
    check_permission(request, vh.name, "read", "queue", q.name)
    while q.recovering and (wait := q.wait_for()) is not None:
        await wait
    q.purge()
    return no_content()


@routes.get("/api/queues/{vhost}/{name}/bindings")
async def queue_bindings(request: web.Request) -> web.Response:
    vh, q = queue_of(request)
    return list_response(request, [b for b in vhost_bindings(vh)
                                   if b["destination_type"] == "queue"
                                   and b["destination"] == q.name])


# --- exchanges -----------------------------------------------------------------------
@routes.get("/api/exchanges")
@routes.get("/api/exchanges/{vhost}")
async def list_exchanges(request: web.Request) -> web.Response:
    b, stats = broker_of(request), stats_of(request)
    return list_response(request, [exchange_json(b, stats, vh.name, ex)
                                   for vh in visible_vhosts(request)
                                   for ex in list(vh.exchanges.values())])


def exchange_of(request: web.Request, key: str = "name") -> tuple[Any, Any]:
    vh = visible_vhosts(request)[0]
    ex = vh.exchanges.get(name(request, key))
    if ex is None:
        raise not_found()
    return vh, ex


@routes.get("/api/exchanges/{vhost}/{name}")
async def get_exchange(request: web.Request) -> web.Response:
    vh, ex = exchange_of(request)
    return json_response(exchange_json(broker_of(request), stats_of(request), vh.name, ex))


@routes.put("/api/exchanges/{vhost}/{name}")
async def put_exchange(request: web.Request) -> web.Response:
    data = await body(request, "type")
    vh = visible_vhosts(request)[0]
    xname = name(request, "name")
    if not xname:
        raise bad_request("ACCESS_REFUSED - operation not permitted on the default exchange")
    if xname.startswith("amq."):
        raise bad_request(f"exchange name '{xname}' contains reserved prefix 'amq.'")
    check_permission(request, vh.name, "configure", "exchange", xname)
    b = broker_of(request)
    xtype = data["type"]
    if xtype not in b.runtime.exchange_types:
        raise bad_request(f"invalid type '{xtype}' for exchange '{xname}' in vhost "
                          f"'{vh.name}': unknown exchange type")
    durable = as_bool(data.get("durable"), "durable", True)
    auto_delete = as_bool(data.get("auto_delete"), "auto_delete", False)
    internal = as_bool(data.get("internal"), "internal", False)
    args = _arguments(data)
    existing = vh.exchanges.get(xname)
    if existing is not None:
        b.definitions.check_exchange_equivalent(existing, xtype, durable, auto_delete, internal, args)
        return no_content()
    await b.definitions.declare_exchange(vh, xname, xtype, durable, auto_delete, internal, args)
    return web.Response(status=201)


@routes.delete("/api/exchanges/{vhost}/{name}")
async def delete_exchange(request: web.Request) -> web.Response:
    vh, ex = exchange_of(request)
    if ex.name == "" or ex.name.startswith("amq."):
        raise bad_request(f"ACCESS_REFUSED - operation not permitted on exchange "
                          f"'{ex.name or 'amq.default'}'")
    check_permission(request, vh.name, "configure", "exchange", ex.name)
    if request.query.get("if-unused") == "true" and (
            ex.bindings or any(b.destination == Destination("exchange", ex.name)
                               for b in vh.bindings())):
        raise bad_request(f"PRECONDITION_FAILED - {resource_text('exchange', ex.name, vh.name)} "
                          "in use")
    await broker_of(request).definitions.delete_exchange(vh, ex.name, False)
    return no_content()


@routes.get("/api/exchanges/{vhost}/{name}/bindings/source")
async def exchange_bindings_source(request: web.Request) -> web.Response:
    vh, ex = exchange_of(request)
    return list_response(request, [b for b in vhost_bindings(vh) if b["source"] == ex.name])


@routes.get("/api/exchanges/{vhost}/{name}/bindings/destination")
async def exchange_bindings_destination(request: web.Request) -> web.Response:
    vh, ex = exchange_of(request)
    return list_response(request, [b for b in vhost_bindings(vh)
                                   if b["destination_type"] == "exchange"
                                   and b["destination"] == ex.name])


# --- bindings ------------------------------------------------------------------------
@routes.get("/api/bindings")
@routes.get("/api/bindings/{vhost}")
async def list_bindings(request: web.Request) -> web.Response:
    return list_response(request, [b for vh in visible_vhosts(request)
                                   for b in vhost_bindings(vh)])


_KINDS = {"q": "queue", "e": "exchange"}


def _binding_ends(request: web.Request) -> tuple[Any, str, Destination]:
    vh = visible_vhosts(request)[0]
    source = name(request, "source")
    kind = _KINDS[request.match_info["kind"]]
    dest = name(request, "destination")
    if source not in vh.exchanges:
        raise not_found()
    if (kind == "queue" and dest not in vh.queues) or (
            kind == "exchange" and dest not in vh.exchanges):
        raise not_found()
    return vh, source, Destination(kind, dest)


def _matching(vh: Any, source: str, dest: Destination) -> list[dict]:
    return [b for b in vhost_bindings(vh) if b["source"] == source
            and b["destination_type"] == dest.kind and b["destination"] == dest.name]


@routes.get(r"/api/bindings/{vhost}/e/{source}/{kind:[qe]}/{destination}")
async def list_pair_bindings(request: web.Request) -> web.Response:
    vh, source, dest = _binding_ends(request)
    return list_response(request, _matching(vh, source, dest))


@routes.post(r"/api/bindings/{vhost}/e/{source}/{kind:[qe]}/{destination}")
async def create_binding(request: web.Request) -> web.Response:
    data = await body(request)
    vh, source, dest = _binding_ends(request)
    if source == "":
        raise bad_request("ACCESS_REFUSED - operation not permitted on the default exchange")
    check_permission(request, vh.name, "write", dest.kind, dest.name)
    check_permission(request, vh.name, "read", "exchange", source)
    routing_key = str(data.get("routing_key", ""))
    args = _arguments(data)
    await broker_of(request).definitions.bind(vh, source, dest, routing_key, args)
    resp = web.Response(status=201)
    resp.headers["Location"] = properties_key(routing_key, args)
    return resp


def _one_binding(request: web.Request) -> tuple[Any, str, Destination, dict]:
    vh, source, dest = _binding_ends(request)
    props = request.match_info["props"]
    for b in _matching(vh, source, dest):
        if b["properties_key"] == props or props == properties_key(b["routing_key"],
                                                                    b["arguments"]):
            return vh, source, dest, b
    raise not_found()


@routes.get(r"/api/bindings/{vhost}/e/{source}/{kind:[qe]}/{destination}/{props}")
async def get_binding(request: web.Request) -> web.Response:
    return json_response(_one_binding(request)[3])


@routes.delete(r"/api/bindings/{vhost}/e/{source}/{kind:[qe]}/{destination}/{props}")
async def delete_binding(request: web.Request) -> web.Response:
    vh, source, dest, b = _one_binding(request)
    if source == "":
        raise bad_request("ACCESS_REFUSED - operation not permitted on the default exchange")
    check_permission(request, vh.name, "write", dest.kind, dest.name)
    check_permission(request, vh.name, "read", "exchange", source)
    raw_args = next((x.arguments for x in vh.exchanges[source].bindings.values()
                     if x.destination == dest and x.routing_key == b["routing_key"]
                     and properties_key(x.routing_key, x.arguments) == b["properties_key"]),
                    b["arguments"])
    await broker_of(request).definitions.unbind(vh, source, dest, b["routing_key"], raw_args)
    return no_content()
