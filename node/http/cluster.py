"""Cluster membership, vhost placement and replication over HTTP (what `warrenctl
cluster_status`, `join_cluster`, `forget_cluster_node`, `add_vhost --owner --replicas`,
`move_vhost` and `verify_vhost` call).  These paths are WarrenMQ's own: RabbitMQ manages membership only from
its CLI.  A vhost's live replication figures, its move and the comparison of its copies are the
owner's business: other
nodes relay those requests to it."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cluster import shards
from node.http import moves
from node.http.api_conventions import (
    ADMINISTRATOR,
    MONITORING,
    bad_request,
    body,
    broker_of,
    json_response,
    name,
    no_content,
    not_found,
    require,
)
from node.http.proxy import from_owner
from node.runtime.vhost_roles import MOVE_SYNC_TIMEOUT

routes = web.RouteTableDef()

# a move first brings the target in sync (a snapshot of a large vhost) before it pauses;
# a relayed move may take that long plus its last steps
MOVE_HTTP_MARGIN = 60.0
# hashing every copy of a large vhost
VERIFY_HTTP_TIMEOUT = 600.0


@routes.get("/api/cluster-status")
async def cluster_status(request: web.Request) -> web.Response:
    require(request, MONITORING)
    return json_response(broker_of(request).placement.cluster_status())


@routes.post("/api/cluster/nodes")
async def join_node(request: web.Request) -> web.Response:
    """Add a Raft member; start the new node afterwards with every member as its peers."""
    require(request, ADMINISTRATOR)
    data = await body(request, "raft_address")
    address = str(data["raft_address"])
    if ":" not in address:
        raise bad_request("raft_address must be host:port")
    outcome = await broker_of(request).placement.join_node(address)
    if outcome["state"] == "joining":  # may still be committed: 202, not an error
        return json_response(outcome, status=202)
    return json_response(outcome, status=201)


@routes.delete("/api/cluster/nodes/{node}")
async def forget_node(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    await broker_of(request).placement.forget_node(name(request, "node"))
    return no_content()


def _copies(data: dict) -> int | None:
    replicas = data.get("replicas")
    if replicas is None:
        return None
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise bad_request("replicas must be a whole number of copies >= 1 (the owner's "
                          "included)")
    return replicas


@routes.get("/api/cluster/vhosts")
async def list_placements(request: web.Request) -> web.Response:
    require(request, MONITORING)
    b = broker_of(request)
    return json_response([b.roles.describe(v)
                          for v in sorted(r.name for r in b.runtime.records.vhosts())])


@routes.get("/api/cluster/vhosts/{vhost}")
async def placement(request: web.Request) -> web.Response:
    """Owner, epoch, replicas, in-sync set and each replica's lag (from the owner)."""
    require(request, MONITORING)
    b = broker_of(request)
    vhost = name(request, "vhost")
    record = b.runtime.records.vhost(vhost)
    if record is None:
        raise not_found()
    shard = request.query.get("shard")
    if shard is not None:  # one shard, from its owner (its lag, a move under way)
        if not shard.isdigit() or int(shard) >= record.shards:
            raise bad_request(f"shard must be a shard of vhost '{vhost}': 0 to "
                              f"{record.shards - 1}")
        vhost = shards.unit_key(vhost, int(shard))
    if b.roles.available(vhost) is None:
        # the lag figures are the owner's; a hung owner must not hang this answer
        relayed = await from_owner(request, vhost, timeout=2.0)
        if relayed is not None and relayed.status == 200:
            return relayed
    return json_response(b.roles.describe(vhost))


@routes.put("/api/cluster/vhosts/{vhost}")
async def place_vhost(request: web.Request) -> web.Response:
    """Create a vhost on a chosen node with a number of copies, or (if it exists) change
    its number of copies and move it to the given owner."""
    require(request, ADMINISTRATOR)
    data = await body(request)
    b = broker_of(request)
    vhost = name(request, "vhost")
    owner = data.get("owner")
    if owner is not None and not isinstance(owner, str):
        raise bad_request("owner must be a node name")
    copies = _copies(data)
    count = data.get("shards")
    if b.runtime.records.vhost(vhost) is None:
        await b.definitions.add_vhost(vhost, str(data.get("description", "")), owner=owner,
                                      replicas=copies,
                                      shard_count=1 if count is None else count)
        return web.Response(status=201)
    if count is not None:
        await b.definitions.set_vhost_shards(vhost, count)
    if copies is not None:
        await b.placement.set_replication_factor(vhost, copies)
    if owner is not None and owner != b.runtime.owner_of(vhost):
        return await _move(request, vhost, owner)
    return no_content()


@routes.post("/api/cluster/vhosts/{vhost}/move")
async def move_vhost(request: web.Request) -> web.Response | web.StreamResponse:
    """Move a vhost with its messages; answers once the new owner serves it."""
    require(request, ADMINISTRATOR)
    data = await body(request, "node")
    target = data["node"]
    if not isinstance(target, str):
        raise bad_request("node must be a node name")
    vhost = name(request, "vhost")
    record = broker_of(request).runtime.records.vhost(vhost)
    if record is None:
        raise not_found()
    unit, sync_timeout = _unit(vhost, record, data), _sync_timeout(data)
    if moves.wants_stream(request):  # progress lines, then how it ended
        why = broker_of(request).roles.available(unit)
        if why is not None:
            raise bad_request(f"cannot move {shards.label(unit)}: {why}")
        return await moves.stream(request, moves.move_events(request, unit, target,
                                                             sync_timeout))
    return await _move(request, unit, target, sync_timeout)


@routes.post("/api/cluster/vhosts/{vhost}/rebalance")
async def rebalance_vhost(request: web.Request) -> web.Response | web.StreamResponse:
    """Spread the vhost's shard owners evenly over the running nodes, one live move at a
    time (as `rabbitmq-queues rebalance`); answers with the moves made."""
    require(request, ADMINISTRATOR)
    vhost = name(request, "vhost")
    if broker_of(request).runtime.records.vhost(vhost) is None:
        raise not_found()
    return await _rebalance(request, [vhost])


@routes.post("/api/cluster/rebalance")
async def rebalance_all(request: web.Request) -> web.Response | web.StreamResponse:
    """Rebalance every sharded vhost, in turn."""
    require(request, ADMINISTRATOR)
    b = broker_of(request)
    return await _rebalance(request, sorted(
        r.name for r in b.runtime.records.vhosts() if r.shards > 1))


async def _rebalance(request: web.Request,
                     vhosts: list[str]) -> web.Response | web.StreamResponse:
    data = await body(request)
    events = moves.rebalance_events(request, vhosts, _sync_timeout(data))
    if moves.wants_stream(request):
        return await moves.stream(request, events)
    return await moves.outcome(events)


def _sync_timeout(data: dict) -> float:
    """How long a move may wait for its target to get in sync (seconds)."""
    value = data.get("timeout", MOVE_SYNC_TIMEOUT)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not \
            0 < value <= MOVE_SYNC_TIMEOUT:
        raise bad_request(f"timeout must be a number of seconds in (0, {MOVE_SYNC_TIMEOUT:g}]")
    return float(value)


async def _move(request: web.Request, vhost: str, target: str,
                sync_timeout: float = MOVE_SYNC_TIMEOUT) -> web.Response:
    """Move a unit (a vhost, or one of its shards by its unit key)."""
    b = broker_of(request)
    why = b.roles.available(vhost)
    if why is not None:
        raise bad_request(f"cannot move {shards.label(vhost)}: {why}")
    relayed = await from_owner(request, vhost, timeout=sync_timeout + MOVE_HTTP_MARGIN)
    if relayed is not None:
        return relayed
    return json_response(await b.roles.move(vhost, target, sync_timeout))


@routes.post("/api/cluster/vhosts/{vhost}/verify")
async def verify_vhost(request: web.Request) -> web.Response:
    """Compare the vhost's copies: each one's digest at one offset, and whether they
    agree (the owner holds the vhost's writes for as long as the replicas take to open a
    read transaction at its offset)."""
    require(request, ADMINISTRATOR)
    vhost = name(request, "vhost")
    b = broker_of(request)
    record = b.runtime.records.vhost(vhost)
    if record is None:
        raise not_found()
    unit = _unit(vhost, record, await body(request) if request.body_exists else {})
    why = b.roles.available(unit)
    if why is not None:
        raise bad_request(f"cannot verify {shards.label(unit)}: {why}")
    relayed = await from_owner(request, unit, timeout=VERIFY_HTTP_TIMEOUT)
    if relayed is not None:
        return relayed
    from node.runtime.verify import verify_vhost as verify
    return json_response(await verify(b, unit))


def _unit(vhost: str, record: Any, data: dict) -> str:
    """The unit a request names: the vhost, or its shard ``data["shard"]``."""
    shard = data.get("shard", 0)
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < record.shards:
        raise bad_request(f"shard must be a shard of vhost '{vhost}': 0 to {record.shards - 1}")
    return shards.unit_key(vhost, shard)
