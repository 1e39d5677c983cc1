"""The runtime's state, in one place: what the services of node/runtime/ share.

The definitions mirror keeps the replicated parts (vhost records, members, users,
permissions, policies) and the vhosts' runtime objects in line with what Raft committed;
connections register here; the counters are the ones the management plane and the metrics
read.  Nothing here decides anything: the services do.
"""

from __future__ import annotations

import time
from typing import Any

from cluster import shards
from node.exchanges.registry import EXCHANGE_TYPES
from node.runtime.records import Records
from node.vhost import VirtualHost


class Counters:
    """Node-wide message counters (management API, Prometheus): only incremented on the
    hot path, read by the sampler."""

    def __init__(self) -> None:
        self.published = 0
        self.unroutable = 0
        self.returned = 0  # unroutable and mandatory: basic.return
        self.confirmed = 0  # basic.ack sent to publishers
        # rabbitmq_prometheus's global counters that need a count of their own
        self.delivered_consume_auto_ack = 0
        self.delivered_consume_manual_ack = 0
        self.delivered_get_auto_ack = 0
        self.delivered_get_manual_ack = 0
        self.get_empty = 0
        self.received_confirm = 0
        self.connections_opened = 0
        self.connections_closed = 0
        self.channels_opened = 0
        self.channels_closed = 0

    def count_publish(self, routed: bool) -> None:
        self.published += 1
        if not routed:
            self.unroutable += 1


class Elsewhere:
    """The owner of an exclusive queue whose connection is on another node: any
    connection here is refused it (405 RESOURCE_LOCKED), as another connection is."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.exclusive_queues: set[str] = set()


class Runtime:
    """What this node runs now, and the replicated definitions it follows."""

    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        # the runtime objects of every vhost (its queues only where this node owns it)
        self.vhosts: dict[str, VirtualHost] = {}
        # replicated records, as committed: vhosts (owner, epoch, replicas...), members
        self.vhost_defs: dict[str, dict] = {}
        # shards 1.. of sharded vhosts by unit key (cluster/shards.py), and every placement
        # unit (the vhosts, which are their own shard 0, and those shards) by unit key:
        # what roles, replication, failover and moves work on
        self.shard_defs: dict[str, dict] = {}
        self.units: dict[str, dict] = {}
        self.nodes: dict[str, dict] = {}
        self.users: dict[str, dict] = {}
        self.permissions: dict[str, dict[str, dict]] = {}
        self.policies: dict[str, dict[str, dict]] = {}
        # the same records, typed and read-only: what the management plane reads
        self.records = Records(self)
        # client connections of this node, and the ones it forwards to other nodes by vhost
        self.connections: set[Any] = set()
        self.forwarded: dict[str, set[Any]] = {}
        self.reply_channels: dict[str, Any] = {}  # direct reply-to key -> channel
        self.exchange_types = EXCHANGE_TYPES
        self.started_at = time.time()
        # events are applied only once the runtime was built from a snapshot
        self.live = False
        self.counters = Counters()
        # a queue Raft has (an exclusive one of a sharded vhost) whose connection closed:
        # it is deleted through Raft (set by the broker: DefinitionService.queue_unused)
        self.release_queue: Any = None

    # ------------------------------------------------------------------ placement facts
    def owner_of(self, unit: str) -> str | None:
        d = self.units.get(unit)
        return d.get("owner") if d else None

    def owns(self, unit: str) -> bool:
        """Whether this node runs a unit (a vhost's shard 0 by the vhost's name, or a
        shard); one without an owner (a single node's) is served wherever it is opened."""
        owner = self.owner_of(unit)
        return owner is None or owner == self.node_name

    def sharded(self, vhost: str) -> bool:
        """A vhost of several shards: its clients are served where they connect."""
        return shards.count(self.vhost_defs.get(vhost)) > 1

    def set_units(self) -> None:
        """Rebuild `units` from the vhost and shard records (after a snapshot)."""
        self.units = {**self.vhost_defs, **self.shard_defs}

    def put_unit(self, record: dict) -> None:
        """A placement record as committed: a vhost's or a shard's (by its unit key)."""
        name = record["name"]
        if "vhost" in record and name != record["vhost"]:
            self.shard_defs[name] = record
        else:
            self.vhost_defs[name] = record
        self.units[name] = record

    @property
    def cluster_name(self) -> str:
        """One name for the whole cluster, the same on every node: its first member's
        (members are registered through Raft, so every node sees the same order)."""
        return next(iter(self.nodes), self.node_name)

    # ------------------------------------------------------------------ runtime objects
    def drop_queue(self, vh: VirtualHost, name: str) -> None:
        """Remove a queue from the runtime: its consumers are cancelled (basic.cancel to
        clients that asked for it) and an exclusive owner forgets it."""
        q = vh.remove_queue(name)
        if q is None:
            return
        notified = set()
        for c in list(q.consumers):
            ch = c.owner
            if id(ch) not in notified:
                notified.add(id(ch))
                ch.cancel_consumers_of(q)
        q.consumers.clear()
        if q.exclusive_owner is not None:
            q.exclusive_owner.exclusive_queues.discard(name)

    def connection_closed(self, conn: Any) -> None:
        self.connections.discard(conn)
        vh = conn.vhost
        if vh is None:
            return
        vh.connections.discard(conn)
        for name in list(conn.exclusive_queues):
            q = vh.queues.get(name)
            if q is not None and q.exclusive_owner is conn:
                if q.in_raft and self.release_queue is not None:
                    self.release_queue(q)
                else:
                    self.drop_queue(vh, name)
        conn.exclusive_queues.clear()
