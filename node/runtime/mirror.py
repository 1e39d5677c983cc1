"""The runtime mirror of the Raft definitions: applies each committed change (`_on_event`,
one `_ev_<op>` handler per op) and rebuilds the runtime from a full snapshot (`_rebuild`).

Nothing here submits a change: the runtime only follows what Raft committed, so every node
applies the same changes in the same order (node/definition_changes.py submits them).

DefinitionMirror is a mixin of `Broker`. It writes `vhosts` (the runtime VirtualHosts),
`vhost_defs`, `nodes`, `users`, `permissions` and `policies`; it reads `_live` (events are
ignored until the runtime is built), `settings`, `metadata` (snapshot) and uses `stores`
(node/vhost_stores.py). It calls `owns` (placement), `_forget_permission_caches` and
`close_user_connections` (access), `_drop_queue` (broker), `_binding_is_durable`, `_queue_unused` and `_exchange_unused`
(definition changes).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from node import errors
from node.config import Settings
from node.definition_changes import decode_args
from node.exchanges.base import Destination, Exchange
from node.exchanges.registry import EXCHANGE_TYPES
from node.queues.queue import Queue
from node.vhost import VirtualHost
from node.vhost_stores import VhostStores

if TYPE_CHECKING:
    from node.replication import Replication

if TYPE_CHECKING:
    from cluster.raft import MetadataStore

log = logging.getLogger("warren.broker")


class DefinitionMirror:
    settings: Settings
    metadata: "MetadataStore"
    stores: VhostStores
    replication: "Replication"
    forwarded: dict[str, set]
    vhosts: dict[str, VirtualHost]
    vhost_defs: dict[str, dict]
    nodes: dict[str, dict]
    users: dict[str, dict]
    permissions: dict[str, dict[str, dict]]
    policies: dict[str, dict[str, dict]]
    _live: bool

    if TYPE_CHECKING:
        def owns(self, vhost: str) -> bool: ...
        def _forget_permission_caches(self) -> None: ...
        def close_user_connections(self, user: str, why: str,
                                   vhost: str | None = None) -> None: ...
        def _drop_queue(self, vh: VirtualHost, name: str) -> None: ...
        def _binding_is_durable(self, vh: VirtualHost, source: str,
                                dest: Destination) -> bool: ...
        def _queue_unused(self, q: Queue) -> None: ...
        def _exchange_unused(self, ex: Exchange) -> None: ...

    # ------------------------------------------------------------------------------
    # a vhost's runtime: open, close, build from a snapshot
    # ------------------------------------------------------------------------------
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

    def _close_vhost(self, name: str, delete_data: bool, why: str = "is deleted",
                     keep_store: bool = False) -> None:
        vh = self.vhosts.pop(name, None)
        if vh is None:
            return
        for conn in list(vh.connections):
            conn.force_close(errors.CONNECTION_FORCED, f"vhost '{name}' {why}")
        for q in vh.queues.values():
            q.close()
        if not keep_store:
            self.stores.close(name, delete_data)

    def _change_role(self, name: str, why: str) -> None:
        """The vhost's runtime is rebuilt on the other side of a placement change: the
        store stays open (it is, or becomes, this node's replica copy)."""
        if self.owns(name):
            self.replication.prepare_takeover(name)
        else:
            self.replication.step_down(name, why)
        self._close_vhost(name, delete_data=False, why=why,
                          keep_store=self.replication.enabled)

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
        self.replication.reconcile_all()
        for name in wanted:
            self._drop_orphans(name)

    def _drop_orphans(self, name: str) -> None:
        """On the owner, once its queues are built from the definitions (at start, when it
        takes the vhost over, after a snapshot): the stored messages of every queue the
        definitions no longer have go, for every copy (the deletes are replicated).  A
        queue deleted while the owner was down, failing over or moving was never deleted
        from the copies: no owner applied the delete to a store."""
        vh = self.vhosts.get(name)
        if vh is not None and vh.store is not None:
            self.stores.drop_orphaned_messages(name, vh.store_keys())

    def _build_vhost(self, name: str, state: dict) -> None:
        """Open a vhost's runtime from the definitions (its store only on its owner), or
        bring an open one in line with them (a snapshot installed after a gap)."""
        vh = self.vhosts.get(name)
        if vh is not None and (vh.store is not None) != self.owns(name):
            self._change_role(name, why="changed owner")
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
                         arguments=decode_args(q["arguments"]), recover=True,
                         declaration=q.get("id", ""))
        for b in state.get("bindings", {}).get(name, {}).values():
            vh.bind(b["source"], Destination(b["destination_type"], b["destination"]),
                    b["routing_key"], decode_args(b["arguments"]))

    def _prune_vhost(self, vh: VirtualHost, state: dict) -> None:
        """Drop durable things the definitions no longer have (deleted while we lagged)."""
        queues = state.get("queues", {}).get(vh.name, {})
        exchanges = state.get("exchanges", {}).get(vh.name, {})
        for qname, q in list(vh.queues.items()):
            if q.durable and q.exclusive_owner is None and (
                    qname not in queues or q.declaration != queues[qname].get("id", "")):
                self._drop_queue(vh, qname)  # gone, or deleted and declared again
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

    # ------------------------------------------------------------------------------
    # committed definition changes, one handler per op
    # ------------------------------------------------------------------------------
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
            "epoch": 1 if cmd.get("owner") else 0, "replicas": [], "in_sync": [],
            "replication_factor": None}
        if cmd.get("owner") == self.settings.node_name:
            self.replication.grant(cmd["vhost"], 1)
        self._open_vhost(cmd["vhost"])
        self.replication.reconcile(cmd["vhost"])
        self.users[cmd["user"]] = {"name": cmd["user"], "password_hash": cmd["password_hash"],
                                   "hashing": cmd["hashing"], "tags": list(cmd["tags"])}
        self.permissions.setdefault(cmd["vhost"], {})[cmd["user"]] = {
            "user": cmd["user"], "vhost": cmd["vhost"], "configure": ".*", "write": ".*",
            "read": ".*"}

    def _ev_add_vhost(self, cmd: dict, result: dict) -> None:
        if "vhost" in result:
            self.vhost_defs[cmd["name"]] = result["vhost"]
            if result.get("created") and \
                    result["vhost"].get("owner") == self.settings.node_name:
                self.replication.grant(cmd["name"], result["vhost"]["epoch"])
        self._open_vhost(cmd["name"])
        self.replication.reconcile(cmd["name"])

    def _ev_set_vhost_owner(self, cmd: dict, result: dict) -> None:
        name = cmd["name"]
        was_mine = self.owns(name)
        self.vhost_defs[name] = result["vhost"]
        if result["vhost"].get("owner") == self.settings.node_name:
            self.replication.grant(name, result["vhost"]["epoch"])
        if was_mine != self.owns(name) and name in self.vhosts:
            # the vhost moves (or fails over): clients reconnect (to any node) and reach
            # the new owner
            self._change_role(name, why=f"moved to node '{result['vhost'].get('owner')}'")
            self._build_vhost(name, self.metadata.snapshot())
            self._drop_orphans(name)
        # clients this node forwards to the old owner: it may be hung or cut off and never
        # close them itself
        new_owner = result["vhost"].get("owner")
        for spliced in list(self.forwarded.get(name, ())):
            if spliced.owner != new_owner:
                spliced.close(errors.CONNECTION_FORCED,
                              f"CONNECTION_FORCED - vhost '{name}' moved to node "
                              f"'{new_owner}'; reconnect")
        self.replication.reconcile(name)

    def _ev_set_vhost_replicas(self, cmd: dict, result: dict) -> None:
        self.vhost_defs[cmd["name"]] = result["vhost"]
        self.replication.reconcile(cmd["name"])

    def _ev_set_in_sync(self, cmd: dict, result: dict) -> None:
        self.vhost_defs[cmd["name"]] = result["vhost"]
        self.replication.reconcile(cmd["name"])

    def _ev_register_node(self, cmd: dict, result: dict) -> None:
        self.nodes[cmd["name"]] = result.get("node") or {k: cmd.get(k) for k in (
            "name", "raft", "forward", "amqp", "http")}
        self.replication.reconcile_all()  # followers of that node's vhosts use its address

    def _ev_forget_node(self, cmd: dict, result: dict) -> None:
        self.nodes.pop(cmd["name"], None)
        if result.get("vhosts"):
            self.vhost_defs = dict(self.metadata.snapshot().get("vhosts", {}))
            self.replication.reconcile_all()

    def _ev_set_vhost_limits(self, cmd: dict, result: dict) -> None:
        vh = self.vhosts.get(cmd["name"])
        if vh is not None:
            vh.limits = dict(result["vhost"].get("limits") or {})

    def _ev_delete_vhost(self, cmd: dict, result: dict) -> None:
        self.replication.step_down(cmd["name"], "the vhost is deleted")
        self.replication.forget(cmd["name"])
        self._close_vhost(cmd["name"], delete_data=True)
        self.vhost_defs.pop(cmd["name"], None)
        self.permissions.pop(cmd["name"], None)
        self.policies.pop(cmd["name"], None)

    def _ev_add_user(self, cmd: dict, result: dict) -> None:
        before = self.users.get(cmd["name"])
        self.users[cmd["name"]] = {"name": cmd["name"], "password_hash": cmd["password_hash"],
                                   "hashing": cmd.get("hashing", ""),
                                   "tags": list(cmd.get("tags", []))}
        if before is not None and before.get("password_hash") != cmd["password_hash"]:
            # PUT /api/users/<name> with a new password is how a password changes
            self.close_user_connections(cmd["name"],
                                        f"credentials of user '{cmd['name']}' changed")

    def _ev_delete_user(self, cmd: dict, result: dict) -> None:
        self.users.pop(cmd["name"], None)
        for perms in self.permissions.values():
            perms.pop(cmd["name"], None)
        self._forget_permission_caches()
        self.close_user_connections(cmd["name"], f"user '{cmd['name']}' is deleted")

    def _ev_change_password(self, cmd: dict, result: dict) -> None:
        u = self.users.get(cmd["name"])
        if u is not None:
            u["password_hash"] = cmd["password_hash"]
            u["hashing"] = cmd.get("hashing", u.get("hashing", ""))
        self.close_user_connections(cmd["name"], f"credentials of user '{cmd['name']}' changed")

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
        self.close_user_connections(
            cmd["user"], f"access to vhost '{cmd['vhost']}' revoked for user '{cmd['user']}'",
            cmd["vhost"])

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
        existing = vh.queues.get(q["name"])
        if (existing is not None and existing.durable and existing.exclusive_owner is None
                and existing.declaration != q.get("id", "")):
            self._drop_queue(vh, q["name"])  # a delete this runtime missed
        vh.add_queue(q["name"], durable=True, auto_delete=q["auto_delete"],
                     arguments=decode_args(q["arguments"]), recover=True,
                     declaration=q.get("id", ""))

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
