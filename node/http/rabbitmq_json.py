"""Runtime objects as the JSON RabbitMQ's management API returns for them (same keys, same
nesting), so that rabbitmqadmin habits, scripts and dashboards carry over."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import quote

from cluster import shards
from node.http.stats import (
    Sampler,
    channel_counters,
    exchange_counters,
    queue_counters,
    vhost_counters,
)
from node.runtime.records import PermissionRecord, PolicyRecord, UserRecord, VhostRecord

PROTOCOL = "AMQP 0-9-1"


def cluster_state(broker: Any) -> dict[str, str]:
    """Every member serves every vhost (a connection to a non-owner is forwarded to the
    owner), so, as in RabbitMQ, each member is listed with whether it is up."""
    nodes = broker.placement.cluster_status()["nodes"]
    return {n["name"]: "running" if n["running"] else "nodedown" for n in nodes} or {
        node_name(broker): "running"}


def node_name(broker: Any) -> str:
    return broker.settings.node_name


# --- policies: node.policies decides, for the broker and for what the API shows ------------
def matching_policy(broker: Any, vhost: str, name: str, kind: str) -> PolicyRecord | None:
    """The policy in effect on a queue or exchange (`kind` "queues" or "exchanges")."""
    return broker.runtime.records.policy_for(vhost, kind.rstrip("s"), name)


def queue_policy(broker: Any, vhost: str, q: Any) -> PolicyRecord | None:
    """The policy in effect on a queue: the queue's own record of it when it keeps one."""
    if hasattr(q, "policy_name"):
        return broker.runtime.records.policy(vhost, q.policy_name) if q.policy_name else None
    return matching_policy(broker, vhost, q.name, "queues")


def policy_json(p: PolicyRecord) -> dict:
    return {"vhost": p.vhost, "name": p.name, "pattern": p.pattern, "apply-to": p.apply_to,
            "definition": p.definition, "priority": p.priority}


def permission_json(p: PermissionRecord) -> dict:
    return {"user": p.user, "vhost": p.vhost, "configure": p.configure, "write": p.write,
            "read": p.read}


# --- queues, exchanges, bindings -----------------------------------------------------
def all_channels(broker: Any) -> list[tuple[Any, Any]]:
    """Every (connection, channel) open on this node."""
    return [(c, ch) for c in list(broker.runtime.connections) for ch in c.stats().channels]


def unacked_bytes(broker: Any) -> dict[Any, int]:
    """Body bytes delivered and not yet acknowledged, per queue: what the channels hold,
    counted once per request."""
    out: dict[Any, int] = {}
    for _conn, ch in all_channels(broker):
        for q, n in ch.unacked_bytes().items():
            out[q] = out.get(q, 0) + n
    return out


def queue_json(broker: Any, stats: Sampler, vhost: str, q: Any,
               unacked_by_queue: dict[Any, int] | None = None) -> dict:
    """Figures that are measured, nothing made up: RabbitMQ's consumer_capacity and
    consumer_utilisation, memory and messages_persistent are not tracked here, so they
    are left out rather than shown as constants."""
    key = ("queue", vhost, q.name)
    qs = q.stats()
    ready, unacked = qs.messages_ready, qs.messages_unacknowledged
    policy = queue_policy(broker, vhost, q)
    if unacked_by_queue is None:
        unacked_by_queue = unacked_bytes(broker)
    bytes_unacked = unacked_by_queue.get(q, 0)
    exclusive_consumer, sac = qs.exclusive_consumer, qs.single_active_consumer
    out = {
        "name": q.name, "vhost": vhost, "durable": q.durable, "auto_delete": q.auto_delete,
        "exclusive": q.exclusive_owner is not None, "arguments": q.arguments,
        "type": "classic", "node": broker.runtime.owner_of(q.unit) or node_name(broker),
        "shard": shards.split(q.unit)[1], "state": "running",
        "policy": policy.name if policy else None, "operator_policy": None,
        "effective_policy_definition": policy.definition if policy else {},
        "consumers": len(qs.consumers),
        "exclusive_consumer_tag": exclusive_consumer.tag if exclusive_consumer else None,
        "single_active_consumer_tag": sac.tag if sac is not None else None,
        "message_bytes": qs.message_bytes_ready + bytes_unacked,
        "message_bytes_ready": qs.message_bytes_ready,
        "message_bytes_unacknowledged": bytes_unacked,
        "message_bytes_ram": qs.message_bytes_ready_ram + bytes_unacked,
        "messages_ram": qs.messages_ready_ram + unacked,
        "messages_ready_ram": qs.messages_ready_ram,
        "messages_unacknowledged_ram": unacked,
        "messages_paged_out": qs.messages_paged_out,
        "message_bytes_paged_out": qs.message_bytes_paged_out,
        "head_message_timestamp": qs.head_message_timestamp,
        "recoverable_slaves": None,
        "storage_version": 2,
        "message_stats": stats.message_stats(key, queue_counters(q)),
    }
    if q.settings.queue_type == "quorum":
        # RabbitMQ's quorum-queue fields; its Raft members are the vhost's copies here
        meta = broker.runtime.records.vhost(vhost) or VhostRecord(vhost)
        leader = meta.owner or node_name(broker)
        members = sorted({leader, *meta.replicas})
        out.update(type="quorum", leader=leader,
                   members=members, online=members, messages_dlx=0, message_bytes_dlx=0)
        for gone in ("storage_version", "recoverable_slaves", "exclusive_consumer_tag"):
            out.pop(gone, None)
    idle = stats.idle_since(key)
    if idle is not None and not qs.consumers:
        out["idle_since"] = idle
    out.update(stats.details(key, {"messages": ready + unacked, "messages_ready": ready,
                                   "messages_unacknowledged": unacked}))
    return out


def exchange_json(broker: Any, stats: Sampler, vhost: str, ex: Any) -> dict:
    policy = matching_policy(broker, vhost, ex.name, "exchanges") if ex.name else None
    return {"name": ex.name, "vhost": vhost, "type": ex.type_name, "durable": ex.durable,
            "auto_delete": ex.auto_delete, "internal": ex.internal, "arguments": ex.arguments,
            "user_who_performed_action": "", "policy": policy.name if policy else None,
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
def vhost_json(broker: Any, stats: Sampler, vh: Any, record: VhostRecord | None) -> dict:
    meta = record or VhostRecord(vh.name)
    key = ("vhost", vh.name)
    vs = vh.stats()
    description = meta.description
    tags = list(meta.tags)
    dqt = meta.default_queue_type
    out = {"name": vh.name, "description": description, "tags": tags,
           "default_queue_type": dqt,
           "metadata": {"description": description, "tags": tags,
                        "default_queue_type": dqt},
           "tracing": False, "protected_from_deletion": False,
           "cluster_state": cluster_state(broker),
           "recv_oct": vs.recv_bytes, "send_oct": vs.send_bytes,
           "message_stats": stats.message_stats(key, vhost_counters(vh))}
    ready, unacked = vs.messages_ready, vs.messages_unacknowledged
    out.update(stats.details(key, {"messages": ready + unacked, "messages_ready": ready,
                                   "messages_unacknowledged": unacked}))
    # WarrenMQ's placement: who serves the vhost, and who holds copies of its messages
    out.update(owner=meta.owner, epoch=meta.epoch if record is not None else None,
               replicas=list(meta.replicas), in_sync=list(meta.in_sync),
               available=broker.roles.available(vh.name) is None, shards=meta.shards)
    return out


def user_json(u: UserRecord) -> dict:
    return {"name": u.name, "password_hash": u.password_hash,
            "hashing_algorithm": u.hashing or "rabbit_password_hashing_sha256",
            "tags": list(u.tags), "limits": {}}


# --- connections, channels, consumers ---------------------------------------------------
def connection_json(broker: Any, stats: Sampler, c: Any) -> dict:
    key = ("connection", c.name)
    cs = c.stats()
    props = cs.client_properties
    tls = cs.tls_session
    return {
        "name": cs.name, "node": node_name(broker), "type": "network", "protocol": PROTOCOL,
        "user": cs.user, "user_who_performed_action": cs.user, "vhost": cs.vhost,
        "channels": len(cs.channels), "channel_max": cs.channel_max,
        "frame_max": cs.frame_max, "timeout": cs.heartbeat, "state": cs.state,
        "peer_host": cs.peer_host, "peer_port": cs.peer_port,
        "host": cs.host, "port": cs.port,
        "ssl": cs.ssl,
        "auth_mechanism": cs.auth_mechanism or None,
        "client_properties": props,
        "user_provided_name": props.get("connection_name"),
        "connected_at": int(cs.connected_at * 1000),
        "recv_oct": cs.recv_bytes, "recv_oct_details": {"rate": stats.rate(key, "recv_oct")},
        "send_oct": cs.send_bytes, "send_oct_details": {"rate": stats.rate(key, "send_oct")},
        # socket reads and writes, and bytes waiting in our send buffer
        "recv_cnt": cs.recv_count, "send_cnt": cs.send_count, "send_pend": cs.send_pending,
        # RabbitMQ's ssl_* fields, from the live TLS session (absent without one)
        **({"ssl_protocol": tls.protocol, "ssl_cipher": tls.cipher,
            "peer_cert_subject": tls.peer_cert_subject} if tls is not None else {}),
    }


def channel_name(conn: Any, ch: Any) -> str:
    return f"{conn.name} ({ch.number})"


def connection_details(conn: Any) -> dict:
    return {"name": conn.name, "peer_host": conn.peer[0], "peer_port": conn.peer[1]}


def channel_json(broker: Any, stats: Sampler, conn: Any, ch: Any) -> dict:
    s = ch.stats()
    return {
        "name": channel_name(conn, ch), "number": s.number, "node": node_name(broker),
        "user": s.user, "user_who_performed_action": s.user, "vhost": s.vhost,
        "connection_details": connection_details(conn),
        "state": s.state,
        "consumer_count": len(s.consumers),
        "messages_unacknowledged": s.messages_unacknowledged,
        "messages_unconfirmed": s.messages_unconfirmed,
        # a transaction's publishes and acks not yet committed
        "messages_uncommitted": s.messages_uncommitted,
        "acks_uncommitted": s.acks_uncommitted,
        "pending_raft_commands": s.pending_raft_commands,
        "prefetch_count": s.prefetch_count, "global_prefetch_count": s.global_prefetch_count,
        "confirm": s.confirm, "transactional": s.transactional,
        "message_stats": stats.message_stats(("channel", conn.name, ch.number),
                                             channel_counters(ch)),
    }


def _consumer_activity(q: Any, c: Any) -> dict:
    """With single-active-consumer only the active one receives; the others wait."""
    sac = q.stats().single_active_consumer
    active = sac is None or sac is c
    return {"active": active, "activity_status": "single_active" if sac is c else
            "up" if active else "waiting"}


def queue_consumer_details(q: Any) -> list[dict]:
    """A queue's consumers as GET /api/queues/{vhost}/{name} lists them."""
    out = []
    for c in q.stats().consumers:
        ch = c.owner.stats()  # the channel that consumes
        out.append({
            "consumer_tag": c.tag, "ack_required": not c.no_ack, "exclusive": c.exclusive,
            "prefetch_count": c.prefetch, "arguments": c.arguments,
            **_consumer_activity(q, c),
            "queue": {"name": q.name, "vhost": q.vhost},
            "channel_details": {"number": ch.number, "connection_name": ch.connection_name,
                                "user": ch.user}})
    return out


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
