"""Cluster membership and vhost placement over HTTP (what `warrenctl cluster_status`,
`join_cluster`, `forget_cluster_node`, `add_vhost --owner` and `set_vhost_owner` call).
These paths are WarrenMQ's own: RabbitMQ manages membership only from its CLI."""

from __future__ import annotations

from aiohttp import web

from node.http.common import (
    ADMINISTRATOR,
    MONITORING,
    bad_request,
    body,
    broker_of,
    json_response,
    name,
    no_content,
    require,
)

routes = web.RouteTableDef()


@routes.get("/api/cluster-status")
async def cluster_status(request: web.Request) -> web.Response:
    require(request, MONITORING)
    return json_response(broker_of(request).cluster_status())


@routes.post("/api/cluster/nodes")
async def join_node(request: web.Request) -> web.Response:
    """Add a Raft member; start the new node afterwards with every member as its peers."""
    require(request, ADMINISTRATOR)
    data = await body(request, "raft_address")
    address = str(data["raft_address"])
    if ":" not in address:
        raise bad_request("raft_address must be host:port")
    await broker_of(request).join_node(address)
    return web.Response(status=201)


@routes.delete("/api/cluster/nodes/{node}")
async def forget_node(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    await broker_of(request).forget_node(name(request, "node"))
    return no_content()


@routes.put("/api/cluster/vhosts/{vhost}")
async def place_vhost(request: web.Request) -> web.Response:
    """Create a vhost on a chosen node, or (if it exists) change its owner."""
    require(request, ADMINISTRATOR)
    data = await body(request, "owner")
    b = broker_of(request)
    vhost = name(request, "vhost")
    if vhost in b.vhost_defs:
        await b.set_vhost_owner(vhost, str(data["owner"]))
        return no_content()
    await b.add_vhost(vhost, str(data.get("description", "")), owner=str(data["owner"]))
    return web.Response(status=201)
