"""/api/overview, /api/nodes, /api/whoami, health checks and the aliveness test."""

from __future__ import annotations

import os
import platform
import time
from typing import Any
from urllib.parse import quote

from aiohttp import web

from node import health
from node.amqp import spec
from node.amqp.frames import content_header_payload
from node.amqp.message import Message
from node.http import system
from node.http.api_conventions import (
    MONITORING,
    broker_of,
    can_use_vhost,
    json_response,
    name,
    not_authorised,
    not_found,
    require,
    stats_of,
    vhost_or_404,
)
from node.http.stats import NODE, queue_depths
from node.runtime.broker import PRODUCT, VERSION
from node.runtime.records import MemberRecord, UserRecord

routes = web.RouteTableDef()

EXCHANGE_DESCRIPTIONS = {
    "direct": "AMQP direct exchange", "fanout": "AMQP fanout exchange",
    "topic": "AMQP topic exchange", "headers": "AMQP headers exchange",
}


def exchange_types(broker: Any) -> list[dict]:
    return [{"name": t, "description": EXCHANGE_DESCRIPTIONS.get(t, ""), "enabled": True}
            for t in sorted(broker.runtime.exchange_types)]


def listeners(broker: Any) -> list[dict]:
    s = broker.settings
    return [{"node": s.node_name, "protocol": "amqp", "ip_address": s.amqp_host,
             "port": s.amqp_port, "socket_opts": {}},
            {"node": s.node_name, "protocol": "http", "ip_address": s.http_host,
             "port": s.http_port, "socket_opts": {}}]


def object_totals(broker: Any) -> dict:
    queues = [q for vh in broker.runtime.vhosts.values() for q in vh.queues.values()]
    return {"connections": len(broker.runtime.connections),
            "channels": sum(len(c.stats().channels) for c in list(broker.runtime.connections)),
            "exchanges": sum(len(vh.exchanges) for vh in broker.runtime.vhosts.values()),
            "queues": len(queues),
            "consumers": sum(q.consumer_count for q in queues)}


@routes.get("/api/overview")
async def overview(request: web.Request) -> web.Response:
    b, stats = broker_of(request), stats_of(request)
    queues = [q for vh in b.runtime.vhosts.values() if can_use_vhost(request, vh.name)
              for q in vh.queues.values()]
    node = b.settings.node_name
    return json_response({
        "management_version": VERSION, "rabbitmq_version": VERSION, "product_name": PRODUCT,
        "product_version": VERSION, "rates_mode": "basic",
        "erlang_version": f"Python {platform.python_version()}",
        "erlang_full_version": f"Python {platform.python_version()} ({platform.platform()})",
        "release_series_support_status": "supported",
        "cluster_name": b.runtime.cluster_name, "node": node,
        "statistics_db_node": node, "statistics_db_event_queue": 0,
        "disable_stats": False, "enable_queue_totals": True,
        "is_op_policy_updating_enabled": True,
        "sample_retention_policies": {"global": [600, 3600, 28800, 86400],
                                      "basic": [600, 3600], "detailed": [600]},
        "exchange_types": exchange_types(b),
        "object_totals": object_totals(b),
        "queue_totals": stats.details(NODE, queue_depths(queues)),
        "message_stats": stats.message_stats(NODE, stats.node_counters()),
        "churn_rates": {},
        "listeners": listeners(b),
        "contexts": [{"node": node, "description": "WarrenMQ Management", "path": "/",
                      "port": str(b.settings.http_port)}],
        "rates_history": stats.history,
    })


@routes.get("/api/cluster-name")
async def cluster_name(request: web.Request) -> web.Response:
    b = broker_of(request)
    return json_response({"name": b.runtime.cluster_name})


@routes.get("/api/whoami")
async def whoami(request: web.Request) -> web.Response:
    u: UserRecord = request["user"]
    return json_response({"name": u.name, "tags": list(u.tags)})


def node_json(broker: Any) -> dict:
    s = broker.settings
    raft = broker.metadata.status()
    mem = system.resident_memory()
    alarms = system.alarms(broker)
    return {
        "name": s.node_name, "type": "disc", "running": True, "being_drained": False,
        "os_pid": str(os.getpid()), "uptime": int((time.time() - broker.runtime.started_at) * 1000),
        "mem_used": mem, "mem_limit": system.memory_limit(broker),
        "mem_alarm": "memory" in alarms,
        "mem_calculation_strategy": "rss",
        "disk_free": system.disk_free(s.data_dir),
        "disk_free_limit": system.disk_free_limit(broker),
        "disk_free_alarm": "disk" in alarms,
        "fd_used": system.open_fds(), "fd_total": system.max_fds(),
        "sockets_used": len(broker.runtime.connections), "sockets_total": system.max_fds(),
        "processors": os.cpu_count() or 1, "rates_mode": "basic",
        "exchange_types": exchange_types(broker),
        "auth_mechanisms": [{"name": "PLAIN", "description": "SASL PLAIN authentication "
                             "mechanism", "enabled": True},
                            {"name": "AMQPLAIN", "description": "QPid AMQPLAIN mechanism",
                             "enabled": True}],
        "applications": [{"name": "warrenmq", "description": PRODUCT, "version": VERSION}],
        "contexts": [], "log_files": [], "config_files": [], "enabled_plugins": [
            "rabbitmq_management", "rabbitmq_prometheus"],
        "db_dir": os.path.abspath(s.data_dir), "net_ticktime": 60, "partitions": [],
        "cluster_links": [],
        "raft": raft,
    }


def _cluster_fields(broker: Any, status: dict, name: str) -> dict:
    """Membership, leadership and placement of one node, as this node sees them."""
    entry = next((n for n in status["nodes"] if n["name"] == name), None) or {}
    return {"cluster_member": bool(entry), "raft_address": entry.get("raft"),
            "leader": bool(entry.get("leader")), "running": bool(entry.get("running", True)),
            "owned_vhosts": entry.get("owns", [])}


async def _remote_node(request: web.Request, node: MemberRecord) -> dict | None:
    """A peer's own figures, asked from its management API with the caller's credentials
    (users are replicated, so they work there too)."""
    import aiohttp

    from node.http.proxy import relay_session
    from node.tls import relay_scheme
    b = broker_of(request)
    url = (f"{relay_scheme(b.settings)}://{node.http}/api/nodes/"
           f"{quote(node.name, safe='')}?local=true")
    try:
        async with relay_session(b, 1.5) as s:
            async with s.get(url, headers={"Authorization":
                                           request.headers.get("Authorization", "")}) as r:
                if r.status == 200:
                    return await r.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        pass
    return None


@routes.get("/api/nodes")
async def nodes(request: web.Request) -> web.Response:
    require(request, MONITORING)
    b = broker_of(request)
    status = b.placement.cluster_status()
    me = b.settings.node_name
    out = []
    members = [n["name"] for n in status["nodes"]] or [me]
    if me not in members:
        members.append(me)
    for member in sorted(members):
        if member == me:
            item = node_json(b)
        else:
            node = b.runtime.records.member(member)
            remote = await _remote_node(request, node) if node and node.http else None
            item = remote if remote is not None else {}
            if remote is None:
                item = {"name": member, "type": "disc", "running": False}
        item.update(_cluster_fields(b, status, member))
        if member == me:
            item["running"] = True
        out.append(item)
    return json_response(out)


@routes.get("/api/nodes/{node}")
async def get_node(request: web.Request) -> web.Response:
    require(request, MONITORING)
    b = broker_of(request)
    if name(request, "node") != b.settings.node_name:
        raise not_found()
    item = node_json(b)
    if request.query.get("local") != "true":
        item.update(_cluster_fields(b, b.placement.cluster_status(), b.settings.node_name))
    return json_response(item)


# --- health checks: 200 {"status": "ok"} or 503 -----------------------------------------
def _alarm_check(request: web.Request) -> web.Response:
    b = broker_of(request)
    alarms = system.alarms(b)
    if not alarms:
        return json_response({"status": "ok"})
    return json_response({"status": "failed", "reason": "There are alarms in effect in the "
                          "cluster", "alarms": [{"node": b.settings.node_name, "resource": a}
                                                for a in alarms]}, status=503)


@routes.get("/api/health/checks/alarms")
async def health_alarms(request: web.Request) -> web.Response:
    return _alarm_check(request)


@routes.get("/api/health/checks/local-alarms")
async def health_local_alarms(request: web.Request) -> web.Response:
    return _alarm_check(request)


@routes.get("/api/health/checks/virtual-hosts")
async def health_vhosts(request: web.Request) -> web.Response:
    down = health.vhost_problems(broker_of(request))
    if not down:
        return json_response({"status": "ok"})
    return json_response({"status": "failed", "reason": "Some virtual hosts are down",
                          "missing": down}, status=503)


@routes.get("/api/health/checks/ready-to-serve-clients")
async def health_ready(request: web.Request) -> web.Response:
    problems = health.readiness_problems(broker_of(request), _listeners(request))
    if not problems:
        return json_response({"status": "ok"})
    return json_response({"status": "failed", "reason": "; ".join(problems)}, status=503)


def _listeners(request: web.Request) -> dict[str, Any]:
    # registered by `warren` once it listens; the HTTP one serves this very request
    return request.config_dict.get("listeners", {})


@routes.get("/api/health/checks/port-listener/{port}")
async def health_port(request: web.Request) -> web.Response:
    s = broker_of(request).settings
    port = request.match_info["port"]
    amqp = _listeners(request).get("AMQP")
    amqp_ok = amqp is None or not health.listener_problems({"AMQP": amqp})
    if port == str(s.http_port) or (port == str(s.amqp_port) and amqp_ok):
        return json_response({"status": "ok", "port": int(port)})
    return json_response({"status": "failed", "reason": f"No active listener on port {port}",
                          "missing": int(port) if port.isdigit() else port}, status=503)


@routes.get("/api/aliveness-test/{vhost}")
async def aliveness(request: web.Request) -> web.Response:
    """The old end-to-end check: declare a queue, publish to it, get the message back."""
    b = broker_of(request)
    vh = vhost_or_404(request)
    if not can_use_vhost(request, vh.name):
        raise not_authorised("User not authorised to access virtual host")
    q = vh.queues.get("aliveness-test") or await b.definitions.declare_queue(
        vh, "aliveness-test", False, None, False, {})
    body = b"test_message"
    header = content_header_payload(60, len(body), spec.BasicProperties().encode())
    q.publish(Message.from_publish("", "aliveness-test", header, body))
    entry = q.get()
    while entry is not None and entry.message.body != body:
        q.discard(entry)  # leftovers of an earlier, interrupted test
        entry = q.get()
    if entry is None:
        return json_response({"status": "failed", "reason": "no message"}, status=503)
    q.discard(entry)
    return json_response({"status": "ok"})
