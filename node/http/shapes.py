"""Runtime objects as the JSON RabbitMQ's management API returns for them (same keys, same
nesting), so that rabbitmqadmin habits, scripts and dashboards carry over."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import quote

from node import policies
from node.http.stats import (
    Sampler,
    channel_counters,
    exchange_counters,
    queue_counters,
    queue_depths,
    vhost_counters,
)

PROTOCOL = "AMQP 0-9-1"


def cluster_state(broker: Any) -> dict[str, str]:
    """Every member serves every vhost (a connection to a non-owner is forwarded to the
    owner), so, as in RabbitMQ, each member is listed with whether it is up."""
    nodes = broker.cluster_status()["nodes"]
    return {n["name"]: "running" if n["running"] else "nodedown" for n in nodes} or {
        node_name(broker): "running"}


def node_name(broker: Any) -> str:
    return broker.settings.node_name


# --- policies: node.policies decides, for the broker and for what the API shows ------------
def matching_policy(broker: Any, vhost: str, name: str, kind: str) -> dict | None:
    """The policy in effect on a queue or exchange (`kind` "queues" or "exchanges")."""
    return policies.matching_policy(broker.policies.get(vhost, {}), kind.rstrip("s"), name)


def queue_policy(broker: Any, vhost: str, q: Any) -> dict | None:
    """The policy in effect on a queue: the queue's own record of it when it keeps one."""
    if hasattr(q, "policy_name"):
        return broker.policies.get(vhost, {}).get(q.policy_name) if q.policy_name else None
    return matching_policy(broker, vhost, q.name, "queues")


def policy_json(p: dict) -> dict:
    return {"vhost": p["vhost"], "name": p["name"], "pattern": p.get("pattern", ""),
            "apply-to": p.get("apply_to", "all"), "definition": p.get("definition", {}),
            "priority": p.get("priority", 0)}


# --- queues, exchanges, bindings -----------------------------------------------------
def unacked_bytes(broker: Any) -> dict[int, int]:
    """Body bytes delivered and not yet acknowledged, per queue (by id): what the channels
    hold, counted once per request."""
    out: dict[int, int] = {}
    for conn in list(broker.connections):
        for ch in list(conn.channels.values()):
            for q, entry, _c in list(ch.unacked.values()):
                out[id(q)] = out.get(id(q), 0) + len(entry.message.body)
    return out


def _head_timestamp(q: Any) -> int | None:
    """The timestamp property of the message at the head of the queue, as RabbitMQ shows
    it (seconds), or None when it has none."""
    ready = getattr(q, "_ready", None)
    entry = ready.peek() if ready is not None else None
    if entry is None:
        return None
    ts = entry.message.properties.timestamp
    return int(ts) if ts is not None else None


def active_consumer(q: Any) -> Any:
    """The consumer that receives: with single-active-consumer only one; else None."""
    if q.settings.single_active_consumer:
        return q._active_consumer()
    return None


def queue_json(broker: Any, stats: Sampler, vhost: str, q: Any,
               unacked_by_queue: dict[int, int] | None = None) -> dict:
    """Figures that are measured, nothing made up: RabbitMQ's consumer_capacity and
    consumer_utilisation, memory and messages_persistent are not tracked here, so they
    are left out rather than shown as constants."""
    key = ("queue", vhost, q.name)
    ready, unacked = q.message_count, q.unacked
    policy = queue_policy(broker, vhost, q)
    consumers = list(q.consumers)
    exclusive_consumer = getattr(q, "exclusive_consumer", None)
    if unacked_by_queue is None:
        unacked_by_queue = unacked_bytes(broker)
    bytes_unacked = unacked_by_queue.get(id(q), 0)
    paged_bytes = getattr(q, "_paged_bytes", 0)
    sac = active_consumer(q)
    out = {
        "name": q.name, "vhost": vhost, "durable": q.durable, "auto_delete": q.auto_delete,
        "exclusive": q.exclusive_owner is not None, "arguments": q.arguments,
        "type": "classic", "node": node_name(broker), "state": "running",
        "policy": policy["name"] if policy else None, "operator_policy": None,
        "effective_policy_definition": policy.get("definition", {}) if policy else {},
        "consumers": len(consumers),
        "exclusive_consumer_tag": exclusive_consumer.tag if exclusive_consumer else None,
        "single_active_consumer_tag": sac.tag if sac is not None else None,
        "message_bytes": q.ready_bytes + paged_bytes + bytes_unacked,
        "message_bytes_ready": q.ready_bytes + paged_bytes,
        "message_bytes_unacknowledged": bytes_unacked,
        "message_bytes_ram": q.ready_bytes + bytes_unacked,
        "messages_ram": ready - getattr(q, "_paged_count", 0) + unacked,
        "messages_ready_ram": ready - getattr(q, "_paged_count", 0),
        "messages_unacknowledged_ram": unacked,
        "messages_paged_out": getattr(q, "_paged_count", 0),
        "message_bytes_paged_out": paged_bytes,
        "head_message_timestamp": _head_timestamp(q),
        "recoverable_slaves": None,
        "storage_version": 2,
        "message_stats": stats.message_stats(key, queue_counters(q)),
    }
    idle = stats.idle_since(key)
    if idle is not None and not consumers:
        out["idle_since"] = idle
    out.update(stats.details(key, {"messages": ready + unacked, "messages_ready": ready,
                                   "messages_unacknowledged": unacked}))
    return out


def exchange_json(broker: Any, stats: Sampler, vhost: str, ex: Any) -> dict:
    policy = matching_policy(broker, vhost, ex.name, "exchanges") if ex.name else None
    return {"name": ex.name, "vhost": vhost, "type": ex.type_name, "durable": ex.durable,
            "auto_delete": ex.auto_delete, "internal": ex.internal, "arguments": ex.arguments,
            "user_who_performed_action": "", "policy": policy["name"] if policy else None,
            "message_stats": stats.message_stats(("exchange", vhost, ex.name),
                                                 exchange_counters(ex))}


def properties_key(routing_key: str, arguments: dict) -> str:
    """The synthetic name RabbitMQ gives a binding in URLs: the routing key, plus "~" and a
    hash of the arguments when there are any; "~" alone for an empty key."""
    rk = quote(routing_key, safe="") if routing_key else ""
    if not arguments:
        return rk or "~"
    blob = json.dumps(arguments, sort_keys=True, default=str).encode()
    digest = base64.urlsafe_b64encode(hashlib.sha1(blob).digest()[:12]).decode()
    return f"{rk}~{digest}"


def binding_json(vhost: str, source: str, dest_kind: str, dest: str, routing_key: str,
                 arguments: dict) -> dict:
    return {"source": source, "vhost": vhost, "destination": dest,
            "destination_type": dest_kind, "routing_key": routing_key,
            "arguments": arguments, "properties_key": properties_key(routing_key, arguments)}


def vhost_bindings(vh: Any) -> list[dict]:
    """Every binding of a vhost, with the default exchange's implicit ones first, as
    RabbitMQ lists them."""
    out = [binding_json(vh.name, "", "queue", q, q, {}) for q in vh.queues]
    for b in vh.bindings():
        if b.source != "":
            out.append(binding_json(vh.name, b.source, b.destination.kind, b.destination.name,
                                    b.routing_key, b.arguments))
    return out


# --- vhosts, users ---------------------------------------------------------------------
def vhost_json(broker: Any, stats: Sampler, vh: Any, meta: dict | None) -> dict:
    meta = meta or {}
    key = ("vhost", vh.name)
    recv = sum(c.recv_bytes for c in vh.connections)
    send = sum(c.send_bytes for c in vh.connections)
    description = meta.get("description", "")
    tags = list(meta.get("tags", []))
    dqt = meta.get("default_queue_type", "classic")
    out = {"name": vh.name, "description": description, "tags": tags,
           "default_queue_type": dqt,
           "metadata": {"description": description, "tags": tags,
                        "default_queue_type": dqt},
           "tracing": False, "protected_from_deletion": False,
           "cluster_state": cluster_state(broker),
           "recv_oct": recv, "send_oct": send,
           "message_stats": stats.message_stats(key, vhost_counters(vh))}
    out.update(stats.details(key, queue_depths(vh.queues.values())))
    # WarrenMQ's placement: who serves the vhost, and who holds copies of its messages
    out.update(owner=meta.get("owner"), epoch=meta.get("epoch"),
               replicas=list(meta.get("replicas", [])), in_sync=list(meta.get("in_sync", [])),
               available=broker.replication.available(vh.name) is None)
    return out


def user_json(u: dict) -> dict:
    return {"name": u["name"], "password_hash": u.get("password_hash", ""),
            "hashing_algorithm": u.get("hashing") or "rabbit_password_hashing_sha256",
            "tags": list(u.get("tags", [])), "limits": {}}


# --- connections, channels, consumers ---------------------------------------------------
def connection_json(broker: Any, stats: Sampler, c: Any) -> dict:
    key = ("connection", c.name)
    props = getattr(c, "client_properties", {}) or {}
    sock = c.transport.get_extra_info("sockname") if getattr(c, "transport", None) else None
    return {
        "name": c.name, "node": node_name(broker), "type": "network", "protocol": PROTOCOL,
        "user": c.user, "user_who_performed_action": c.user,
        "vhost": c.vhost.name if getattr(c, "vhost", None) else None,
        "channels": len(c.channels), "channel_max": c.channel_max, "frame_max": c.frame_max,
        "timeout": c.heartbeat, "state": c.state_name,
        "peer_host": c.peer[0], "peer_port": c.peer[1],
        "host": sock[0] if sock else None, "port": sock[1] if sock else None,
        "ssl": bool(getattr(c, "tls", False)),
        "auth_mechanism": getattr(c, "auth_mechanism", "") or None,
        "client_properties": props,
        "user_provided_name": props.get("connection_name"),
        "connected_at": int(c.connected_at * 1000),
        "recv_oct": c.recv_bytes, "recv_oct_details": {"rate": stats.rate(key, "recv_oct")},
        "send_oct": c.send_bytes, "send_oct_details": {"rate": stats.rate(key, "send_oct")},
        # socket reads and writes, and bytes waiting in our send buffer
        "recv_cnt": getattr(c, "recv_count", 0), "send_cnt": getattr(c, "send_count", 0),
        "send_pend": (c.transport.get_write_buffer_size()
                      if getattr(c, "transport", None) is not None else 0),
        **_tls_fields(c),
    }


def _tls_fields(c: Any) -> dict:
    """RabbitMQ's ssl_* fields, read from the live TLS session (absent without one)."""
    obj = c.transport.get_extra_info("ssl_object") if getattr(c, "transport", None) else None
    if obj is None:
        return {}
    cipher = obj.cipher()
    return {"ssl_protocol": obj.version(), "ssl_cipher": cipher[0] if cipher else None,
            "peer_cert_subject": getattr(c, "tls_peer_name", None)}


def channel_name(conn: Any, ch: Any) -> str:
    return f"{conn.name} ({ch.number})"


def connection_details(conn: Any) -> dict:
    return {"name": conn.name, "peer_host": conn.peer[0], "peer_port": conn.peer[1]}


def channel_json(broker: Any, stats: Sampler, conn: Any, ch: Any) -> dict:
    tx = getattr(ch, "tx", None)
    confirms = getattr(ch, "_confirms", ())
    return {
        "name": channel_name(conn, ch), "number": ch.number, "node": node_name(broker),
        "user": conn.user, "user_who_performed_action": conn.user,
        "vhost": conn.vhost.name if conn.vhost else None,
        "connection_details": connection_details(conn),
        "state": "running" if ch.state == "open" else str(ch.state),
        "consumer_count": len(ch.consumers), "messages_unacknowledged": len(ch.unacked),
        "messages_unconfirmed": len(confirms),
        # a transaction's publishes and acks not yet committed
        "messages_uncommitted": getattr(ch, "tx_publishes", 0) if tx is not None else 0,
        "acks_uncommitted": len(getattr(ch, "tx_taken", ())) if tx is not None else 0,
        "pending_raft_commands": len(getattr(ch, "_backlog", ())) + int(
            bool(getattr(ch, "_busy", False))),
        "prefetch_count": ch.prefetch_count, "global_prefetch_count": ch.global_prefetch,
        "confirm": ch.confirm, "transactional": tx is not None,
        "message_stats": stats.message_stats(("channel", conn.name, ch.number),
                                             channel_counters(ch)),
    }


def _consumer_activity(q: Any, c: Any) -> dict:
    """With single-active-consumer only the active one receives; the others wait."""
    sac = active_consumer(q)
    active = sac is None or sac is c
    return {"active": active, "activity_status": "single_active" if sac is c else
            "up" if active else "waiting"}


def consumer_json(broker: Any, conn: Any, ch: Any, c: Any) -> dict:
    q = c.queue
    return {
        "consumer_tag": c.tag, "queue": {"name": q.name, "vhost": q.vhost},
        "channel_details": {"name": channel_name(conn, ch), "number": ch.number,
                            "connection_name": conn.name, "node": node_name(broker),
                            "peer_host": conn.peer[0], "peer_port": conn.peer[1],
                            "user": conn.user},
        "ack_required": not c.no_ack, "exclusive": c.exclusive,
        "prefetch_count": c.prefetch, "arguments": c.arguments,
        **_consumer_activity(q, c), "consumer_timeout": None, "priority": c.priority,
    }
