"""The broker: composition root of a node's runtime. It holds the settings, the Raft
metadata store, the runtime dicts and counters, and starts and stops them all.

Its jobs live in their own modules, mixed in or held here:
  node/definitions_mirror.py   applies committed Raft definitions to the runtime
  node/definition_changes.py   submits definition changes, and checks them first
  node/access.py               who may open a vhost and do what in it
  node/placement.py            which node runs a vhost; cluster membership
  node/vhost_stores.py         the vhosts' LMDB stores on disk (`self.stores`)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cluster.membership import new_cluster_id
from node import errors
from node.access import AccessControl
from node.alarms import ResourceMonitor
from node.config import Settings
from node.definition_changes import DefinitionChanges, decode_args
from node.definitions_mirror import DefinitionMirror
from node.exchanges.registry import EXCHANGE_TYPES
from node.placement import Placement
from node.replication import Replication
from node.vhost import VirtualHost
from node.vhost_stores import VhostStores

if TYPE_CHECKING:
    from cluster.raft import MetadataStore

# decode_args lives in node/definition_changes.py; node/http imports it from here
__all__ = ["Broker", "PRODUCT", "VERSION", "decode_args"]

PRODUCT = "WarrenMQ"
VERSION = "0.1.0"


class Broker(DefinitionMirror, AccessControl, DefinitionChanges, Placement):
    def __init__(self, settings: Settings, metadata: "MetadataStore") -> None:
        self.settings = settings
        self.metadata = metadata
        self.vhosts: dict[str, VirtualHost] = {}
        self.users: dict[str, dict] = {}
        self.permissions: dict[str, dict[str, dict]] = {}
        self.policies: dict[str, dict[str, dict]] = {}
        self.connections: set[Any] = set()
        self.reply_channels: dict[str, Any] = {}  # direct reply-to key -> channel
        self.resources: ResourceMonitor | None = None
        self._ack_timer: asyncio.Future | None = None
        self.vhost_defs: dict[str, dict] = {}  # replicated vhost records (owner, epoch...)
        self.nodes: dict[str, dict] = {}  # cluster members: name -> addresses
        self.forward_server: Any = None
        # clients this node forwards to other nodes, by vhost (node/forwarding.Spliced)
        self.forwarded: dict[str, set[Any]] = {}
        self.exchange_types = EXCHANGE_TYPES
        self.loopback_only_guest = True
        self.started_at = time.time()
        self._live = False
        # global counters (management API, Prometheus)
        self.published = 0
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
        self.unroutable = 0
        self.returned = 0  # unroutable and mandatory: basic.return
        self.confirmed = 0  # basic.ack sent to publishers
        self.stores = VhostStores(settings.data_dir, settings.sync)
        self.replication = Replication(self)

    # ------------------------------------------------------------------------------
    # startup and shutdown
    # ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.metadata.start()
        self.metadata.subscribe(self._on_event)
        snapshot = self.metadata.snapshot()
        self.stores.adopt_legacy(snapshot.get("vhosts", {}))  # before tombstones are swept
        self.stores.remove_tombstones()
        self.stores.remove_unknown(snapshot.get("vhosts", {}))
        self._rebuild(snapshot)  # also drops the messages of queues that are gone
        self._live = True
        self.replication.start()
        s = self.settings
        self.resources = ResourceMonitor(
            s.data_dir, s.vm_memory_high_watermark, s.vm_memory_high_watermark_bytes,
            s.disk_free_limit, s.alarm_check_interval, self._alarms_changed,
            store_space=self.stores.space)
        self.stores.on_space_short = self.resources.check
        self.resources.start()
        if s.consumer_timeout > 0:
            self._ack_timer = asyncio.ensure_future(self._check_ack_timeouts())
        from node.auth import hash_password
        await self.metadata.submit({
            "op": "bootstrap", "vhost": s.default_vhost, "user": s.default_user,
            "password_hash": hash_password(s.default_pass),
            "hashing": "rabbit_password_hashing_sha256", "tags": ["administrator"],
            "owner": s.node_name,
            # the cluster's identity, if it has none yet (cluster/membership.py)
            "cluster_id": new_cluster_id()})
        me = self.node_record()
        if self.nodes.get(s.node_name) != me:
            await self.metadata.submit({"op": "register_node", **me})

    async def _check_ack_timeouts(self) -> None:
        timeout = self.settings.consumer_timeout / 1000
        while True:
            await asyncio.sleep(min(max(timeout / 4, 0.05), 15.0))
            now = time.monotonic()
            for conn in list(self.connections):
                for ch in list(conn.channels.values()):
                    ch.check_ack_timeout(now, timeout)

    async def stop(self, step: Callable[[str], None] = lambda _what: None) -> None:
        """Close clients, replication, stores and Raft, in that order; `step` hears which
        (node/shutdown.py names it if the deadline passes first)."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        if self.resources is not None:
            self.resources.stop()
        step("closing client connections")
        for conn in list(self.connections):
            conn.force_close(errors.CONNECTION_FORCED,
                             "broker forced connection closure with reason 'shutdown'")
        await asyncio.sleep(0.05)
        step("stopping replication")
        await self.replication.stop()
        step("closing the message stores")
        await self.stores.close_all()
        step("stopping Raft")
        await self.metadata.close()

    # ------------------------------------------------------------------------------
    # what connections ask of the node; alarms; counters
    # ------------------------------------------------------------------------------
    @property
    def cluster_name(self) -> str:
        """One name for the whole cluster, the same on every node: its first member's
        (members are registered through Raft, so every node sees the same order)."""
        return next(iter(self.nodes), self.settings.node_name)

    def server_properties(self, capabilities: dict) -> dict:
        return {
            "product": PRODUCT, "version": VERSION, "platform": "Python",
            "cluster_name": self.cluster_name,
            "copyright": "WarrenMQ contributors",
            "information": "Licensed under the Apache License 2.0",
            "capabilities": capabilities,
        }

    @property
    def alarms(self) -> set[str]:
        return self.resources.alarms if self.resources is not None else set()

    def _alarms_changed(self, alarms: set[str]) -> None:
        for conn in list(self.connections):
            if alarms:
                conn.alarm_raised(alarms)
            else:
                conn.alarm_cleared()

    def count_publish(self, routed: bool) -> None:
        self.published += 1
        if not routed:
            self.unroutable += 1

    # ------------------------------------------------------------------------------
    # the runtime: queues that go, connections that close
    # ------------------------------------------------------------------------------
    def _drop_queue(self, vh: VirtualHost, name: str) -> None:
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
                self._drop_queue(vh, name)
        conn.exclusive_queues.clear()

