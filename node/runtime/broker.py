"""The broker: composition root of a node's runtime.  It builds the services, each given
what it depends on, around one state object, and starts and stops them:

  node/runtime/state.py        Runtime: the state they share (and the node's counters)
  node/runtime/access.py       AccessControl: who may open a vhost and do what in it
  node/runtime/placement.py    Placement: which node runs a vhost; cluster membership
  node/runtime/definitions.py  DefinitionService: submits definition changes, checked
  node/runtime/mirror.py       DefinitionsMirror: applies committed changes to the runtime
  node/runtime/stores.py       VhostStores: the vhosts' LMDB stores on disk
  node/runtime/vhost_roles.py  VhostRoles: owner or replica of each vhost; failover, moves
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from cluster.membership import new_cluster_id
from node.alarms import ResourceMonitor
from node.amqp import errors
from node.config import Settings
from node.runtime.access import AccessControl
from node.runtime.definitions import DefinitionService
from node.runtime.mirror import DefinitionsMirror
from node.runtime.placement import Placement
from node.runtime.state import Runtime
from node.runtime.stores import VhostStores
from node.runtime.vhost_roles import VhostRoles

if TYPE_CHECKING:
    from cluster.raft import MetadataStore

PRODUCT = "WarrenMQ"
VERSION = "0.1.0"


class Broker:
    def __init__(self, settings: Settings, metadata: "MetadataStore") -> None:
        self.settings = settings
        self.metadata = metadata
        self.runtime = Runtime(settings.node_name)
        self.counters = self.runtime.counters
        self.stores = VhostStores(settings.data_dir, settings.sync)
        self.access = AccessControl(self.runtime)
        self.placement = Placement(settings, metadata, self.runtime)
        self.definitions = DefinitionService(settings, metadata, self.runtime, self.placement)
        self.roles = VhostRoles(settings, metadata, self.runtime, self.stores, self.placement)
        self.placement.availability = self.roles.available
        self.mirror = DefinitionsMirror(settings, metadata, self.runtime, self.stores,
                                        self.roles, self.access, self.definitions)
        self.runtime.release_queue = self.definitions.queue_unused
        self.resources: ResourceMonitor | None = None
        self.forward_server: object = None
        self._ack_timer: asyncio.Future | None = None

    # ------------------------------------------------------------------------------
    # startup and shutdown
    # ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.metadata.start()
        self.metadata.subscribe(self.mirror.on_event)
        snapshot, index = self.metadata.snapshot_applied()
        self.stores.adopt_legacy(snapshot.get("vhosts", {}))  # before tombstones are swept
        self.stores.remove_tombstones()
        self.stores.remove_unknown([*snapshot.get("vhosts", {}), *snapshot.get("shards", {})])
        self.mirror.rebuild(snapshot)  # also drops the messages of queues that are gone
        self.metadata.runtime_built(index)
        self.runtime.live = True
        self.roles.start()
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
        me = self.placement.node_record()
        if self.runtime.nodes.get(s.node_name) != me:
            await self.metadata.submit({"op": "register_node", **me})
        # exclusive queues of sharded vhosts whose connections were here: they are gone
        self.definitions.drop_stale_exclusive()

    async def _check_ack_timeouts(self) -> None:
        timeout = self.settings.consumer_timeout / 1000
        while True:
            await asyncio.sleep(min(max(timeout / 4, 0.05), 15.0))
            now = time.monotonic()
            for conn in list(self.runtime.connections):
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
        for conn in list(self.runtime.connections):
            conn.force_close(errors.CONNECTION_FORCED,
                             "broker forced connection closure with reason 'shutdown'")
        await asyncio.sleep(0.05)
        step("stopping replication")
        self.mirror.links.close()
        await self.roles.stop()
        step("closing the message stores")
        await self.stores.close_all()
        step("stopping Raft")
        await self.metadata.close()

    # ------------------------------------------------------------------------------
    # what connections ask of the node; alarms
    # ------------------------------------------------------------------------------
    def server_properties(self, capabilities: dict) -> dict:
        return {
            "product": PRODUCT, "version": VERSION, "platform": "Python",
            "cluster_name": self.runtime.cluster_name,
            "copyright": "WarrenMQ contributors",
            "information": "Licensed under the Apache License 2.0",
            "capabilities": capabilities,
        }

    @property
    def alarms(self) -> set[str]:
        return self.resources.alarms if self.resources is not None else set()

    def _alarms_changed(self, alarms: set[str]) -> None:
        for conn in list(self.runtime.connections):
            if alarms:
                conn.alarm_raised(alarms)
            else:
                conn.alarm_cleared()
