"""The broker's runtime: vhosts, users and permissions mirrored from the Raft-replicated
definitions, plus the definition operations that channels and the management API call.

Which path a definition takes (decision 1 and 2 of the design brief):
  * durable exchanges, durable non-exclusive queues and bindings between durable things go
    through Raft (`cluster.raft.MetadataStore.submit`); the runtime changes only when the
    committed command comes back as an event, so every node sees the same order;
  * transient and exclusive things live only in this node's memory and die with it (or
    with their connection), as in RabbitMQ.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from node import errors
from node.access import AccessControl
from node.alarms import ResourceMonitor
from node.config import Settings
from node.definition_changes import DefinitionChanges, decode_args
from node.exchanges.base import Destination
from node.exchanges.registry import EXCHANGE_TYPES
from node.placement import Placement
from node.vhost import VirtualHost
from node.vhost_stores import VhostStores

if TYPE_CHECKING:
    from cluster.raft import MetadataStore

log = logging.getLogger("warren.broker")

PRODUCT = "WarrenMQ"
VERSION = "0.1.0"


class Broker(AccessControl, DefinitionChanges, Placement):
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

    # ------------------------------------------------------------------------------
    # startup and shutdown
    # ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.metadata.start()
        self.metadata.subscribe(self._on_event)
        self.stores.remove_tombstones()
        self._rebuild(self.metadata.snapshot())
        for vh in self.vhosts.values():
            self.stores.drop_orphaned_messages(vh.name, vh.queues)
        self._live = True
        s = self.settings
        self.resources = ResourceMonitor(
            s.data_dir, s.vm_memory_high_watermark, s.vm_memory_high_watermark_bytes,
            s.disk_free_limit, s.alarm_check_interval, self._alarms_changed)
        self.resources.start()
        if s.consumer_timeout > 0:
            self._ack_timer = asyncio.ensure_future(self._check_ack_timeouts())
        from node.auth import hash_password
        await self.metadata.submit({
            "op": "bootstrap", "vhost": s.default_vhost, "user": s.default_user,
            "password_hash": hash_password(s.default_pass),
            "hashing": "rabbit_password_hashing_sha256", "tags": ["administrator"],
            "owner": s.node_name})
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

    async def stop(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        if self.resources is not None:
            self.resources.stop()
        for conn in list(self.connections):
            conn.force_close(errors.CONNECTION_FORCED,
                             "broker forced connection closure with reason 'shutdown'")
        await asyncio.sleep(0.05)
        await self.stores.close_all()
        await self.metadata.close()

    def _open_vhost(self, name: str) -> VirtualHost:
        vh = self.vhosts.get(name)
        if vh is not None:
            return vh
        # only the owner holds the vhost's messages
        store = self.stores.open(name) if self.owns(name) else None
        vh = VirtualHost(name, store, self.settings.queue_memory_messages,
                         on_queue_unused=self._queue_unused,
                         on_exchange_unused=self._exchange_unused)
        self.vhosts[name] = vh
        return vh

    def _close_vhost(self, name: str, delete_data: bool, why: str = "is deleted") -> None:
        vh = self.vhosts.pop(name, None)
        if vh is None:
            return
        for conn in list(vh.connections):
            conn.force_close(errors.CONNECTION_FORCED, f"vhost '{name}' {why}")
        for q in vh.queues.values():
            q.close()
        self.stores.close(name, delete_data)

    # ------------------------------------------------------------------------------
    # the runtime mirror of the replicated definitions
    # ------------------------------------------------------------------------------
    def _rebuild(self, state: dict) -> None:
        """Make the runtime match a full snapshot (at start, or when Raft installs one)."""
        self.users = {u["name"]: u for u in state.get("users", {}).values()}
        self.permissions = {v: dict(p) for v, p in state.get("permissions", {}).items()}
        self.policies = {v: dict(p) for v, p in state.get("policies", {}).items()}
        self.nodes = dict(state.get("nodes", {}))
        self.vhost_defs = dict(state.get("vhosts", {}))
        wanted = set(state.get("vhosts", {}))
        for name in list(self.vhosts):
            if name not in wanted:
                self._close_vhost(name, delete_data=True)
        for name in wanted:
            self._build_vhost(name, state)

    def _build_vhost(self, name: str, state: dict) -> None:
        """Open a vhost's runtime from the definitions (its store only on its owner), or
        bring an open one in line with them (a snapshot installed after a gap)."""
        vh = self.vhosts.get(name)
        if vh is not None and (vh.store is not None) != self.owns(name):
            self._close_vhost(name, delete_data=False, why="changed owner")
            vh = None
        if vh is not None:
            self._prune_vhost(vh, state)
        vh = self._open_vhost(name)
        vh.policies = self.policies.setdefault(name, {})
        vh.limits = dict(state["vhosts"][name].get("limits") or {})
        for x in state.get("exchanges", {}).get(name, {}).values():
            if x["type"] in EXCHANGE_TYPES:
                vh.add_exchange(x["name"], x["type"], True, x["auto_delete"], x["internal"],
                                decode_args(x["arguments"]))
        for q in state.get("queues", {}).get(name, {}).values():
            vh.add_queue(q["name"], durable=True, auto_delete=q["auto_delete"],
                         arguments=decode_args(q["arguments"]), recover=True)
        for b in state.get("bindings", {}).get(name, {}).values():
            vh.bind(b["source"], Destination(b["destination_type"], b["destination"]),
                    b["routing_key"], decode_args(b["arguments"]))

    def _prune_vhost(self, vh: VirtualHost, state: dict) -> None:
        """Drop durable things the definitions no longer have (deleted while we lagged)."""
        queues = state.get("queues", {}).get(vh.name, {})
        exchanges = state.get("exchanges", {}).get(vh.name, {})
        for qname, q in list(vh.queues.items()):
            if q.durable and q.exclusive_owner is None and qname not in queues:
                self._drop_queue(vh, qname)
        for xname, ex in list(vh.exchanges.items()):
            if ex.durable and xname not in exchanges:
                vh.remove_exchange(xname)
        wanted = {(b["source"], b["destination_type"], b["destination"], b["routing_key"])
                  for b in state.get("bindings", {}).get(vh.name, {}).values()}
        for b in vh.bindings():
            if ((b.source, b.destination.kind, b.destination.name, b.routing_key) not in wanted
                    and self._binding_is_durable(vh, b.source, b.destination)):
                vh.unbind(b.source, b.destination, b.routing_key, b.arguments)
        vh.apply_policies(self.policies.setdefault(vh.name, {}))

    def _on_event(self, cmd: dict, result: dict) -> None:
        if not self._live or not result.get("ok"):
            return
        op = cmd.get("op")
        try:
            handler = getattr(self, "_ev_" + str(op), None)
            if handler is not None:
                handler(cmd, result)
        except Exception:
            log.exception("applying committed definition %r failed", op)

    def _ev_reset(self, cmd: dict, result: dict) -> None:
        self._rebuild(result["state"])

    def _ev_bootstrap(self, cmd: dict, result: dict) -> None:
        if not result.get("applied"):
            return
        self.vhost_defs[cmd["vhost"]] = {
            "name": cmd["vhost"], "description": "Default virtual host", "tags": [],
            "default_queue_type": "classic", "owner": cmd.get("owner"),
            "epoch": 1 if cmd.get("owner") else 0}
        self._open_vhost(cmd["vhost"])
        self.users[cmd["user"]] = {"name": cmd["user"], "password_hash": cmd["password_hash"],
                                   "hashing": cmd["hashing"], "tags": list(cmd["tags"])}
        self.permissions.setdefault(cmd["vhost"], {})[cmd["user"]] = {
            "user": cmd["user"], "vhost": cmd["vhost"], "configure": ".*", "write": ".*",
            "read": ".*"}

    def _ev_add_vhost(self, cmd: dict, result: dict) -> None:
        if "vhost" in result:
            self.vhost_defs[cmd["name"]] = result["vhost"]
        self._open_vhost(cmd["name"])

    def _ev_set_vhost_owner(self, cmd: dict, result: dict) -> None:
        name = cmd["name"]
        was_mine = self.owns(name)
        self.vhost_defs[name] = result["vhost"]
        if was_mine != self.owns(name) and name in self.vhosts:
            # the vhost moves: clients reconnect (to any node) and reach the new owner
            self._close_vhost(name, delete_data=False,
                              why=f"moved to node '{result['vhost'].get('owner')}'")
            self._build_vhost(name, self.metadata.snapshot())

    def _ev_register_node(self, cmd: dict, result: dict) -> None:
        self.nodes[cmd["name"]] = result.get("node") or {k: cmd.get(k) for k in (
            "name", "raft", "forward", "amqp", "http")}

    def _ev_forget_node(self, cmd: dict, result: dict) -> None:
        self.nodes.pop(cmd["name"], None)

    def _ev_set_vhost_limits(self, cmd: dict, result: dict) -> None:
        vh = self.vhosts.get(cmd["name"])
        if vh is not None:
            vh.limits = dict(result["vhost"].get("limits") or {})

    def _ev_delete_vhost(self, cmd: dict, result: dict) -> None:
        self._close_vhost(cmd["name"], delete_data=True)
        self.vhost_defs.pop(cmd["name"], None)
        self.permissions.pop(cmd["name"], None)
        self.policies.pop(cmd["name"], None)

    def _ev_add_user(self, cmd: dict, result: dict) -> None:
        self.users[cmd["name"]] = {"name": cmd["name"], "password_hash": cmd["password_hash"],
                                   "hashing": cmd.get("hashing", ""),
                                   "tags": list(cmd.get("tags", []))}

    def _ev_delete_user(self, cmd: dict, result: dict) -> None:
        self.users.pop(cmd["name"], None)
        for perms in self.permissions.values():
            perms.pop(cmd["name"], None)

    def _ev_change_password(self, cmd: dict, result: dict) -> None:
        u = self.users.get(cmd["name"])
        if u is not None:
            u["password_hash"] = cmd["password_hash"]
            u["hashing"] = cmd.get("hashing", u.get("hashing", ""))

    def _ev_set_user_tags(self, cmd: dict, result: dict) -> None:
        u = self.users.get(cmd["name"])
        if u is not None:
            u["tags"] = list(cmd["tags"])

    def _ev_set_permissions(self, cmd: dict, result: dict) -> None:
        self.permissions.setdefault(cmd["vhost"], {})[cmd["user"]] = {
            "user": cmd["user"], "vhost": cmd["vhost"], "configure": cmd["configure"],
            "write": cmd["write"], "read": cmd["read"]}
        self._forget_permission_caches()

    def _ev_clear_permissions(self, cmd: dict, result: dict) -> None:
        self.permissions.get(cmd["vhost"], {}).pop(cmd["user"], None)
        self._forget_permission_caches()

    def _ev_set_policy(self, cmd: dict, result: dict) -> None:
        policy = result.get("policy") or {k: cmd.get(k) for k in (
            "vhost", "name", "pattern", "definition", "priority", "apply_to")}
        self.policies.setdefault(cmd["vhost"], {})[cmd["name"]] = policy
        self._apply_policies(cmd["vhost"])

    def _ev_clear_policy(self, cmd: dict, result: dict) -> None:
        self.policies.get(cmd["vhost"], {}).pop(cmd["name"], None)
        self._apply_policies(cmd["vhost"])

    def _apply_policies(self, vhost: str) -> None:
        vh = self.vhosts.get(vhost)
        if vh is not None:
            vh.apply_policies(self.policies.setdefault(vhost, {}))

    def _ev_declare_exchange(self, cmd: dict, result: dict) -> None:
        vh = self.vhosts.get(cmd["vhost"])
        x = result.get("exchange")
        if vh is None or x is None or x["type"] not in EXCHANGE_TYPES:
            return
        vh.add_exchange(x["name"], x["type"], x["durable"], x["auto_delete"], x["internal"],
                        decode_args(x["arguments"]))

    def _ev_delete_exchange(self, cmd: dict, result: dict) -> None:
        vh = self.vhosts.get(cmd["vhost"])
        if vh is not None:
            vh.remove_exchange(cmd["name"])
            for name in result.get("auto_deleted_exchanges", []):
                vh.remove_exchange(name)

    def _ev_declare_queue(self, cmd: dict, result: dict) -> None:
        vh = self.vhosts.get(cmd["vhost"])
        q = result.get("queue")
        if vh is None or q is None:
            return
        vh.add_queue(q["name"], durable=True, auto_delete=q["auto_delete"],
                     arguments=decode_args(q["arguments"]), recover=True)

    def _ev_delete_queue(self, cmd: dict, result: dict) -> None:
        vh = self.vhosts.get(cmd["vhost"])
        if vh is not None:
            self._drop_queue(vh, cmd["name"])
            for name in result.get("auto_deleted_exchanges", []):
                vh.remove_exchange(name)

    def _ev_bind(self, cmd: dict, result: dict) -> None:
        vh = self.vhosts.get(cmd["vhost"])
        if vh is not None:
            vh.bind(cmd["source"], Destination(cmd["destination_type"], cmd["destination"]),
                    cmd["routing_key"], decode_args(cmd.get("arguments")))

    def _ev_unbind(self, cmd: dict, result: dict) -> None:
        vh = self.vhosts.get(cmd["vhost"])
        if vh is not None:
            vh.unbind(cmd["source"], Destination(cmd["destination_type"], cmd["destination"]),
                      cmd["routing_key"], decode_args(cmd.get("arguments")))
            for name in result.get("auto_deleted_exchanges", []):
                vh.remove_exchange(name)

    def server_properties(self, capabilities: dict) -> dict:
        return {
            "product": PRODUCT, "version": VERSION, "platform": "Python",
            "cluster_name": self.settings.node_name,
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

