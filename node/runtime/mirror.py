"""The runtime mirror of the Raft definitions: applies each committed change (`_on_event`,
one `_ev_<op>` handler per op) and rebuilds the runtime from a full snapshot (`_rebuild`).

Nothing here submits a change: the runtime only follows what Raft committed, so every node
applies the same changes in the same order (node/runtime/definitions.py submits them).

It writes the runtime state (the vhosts' runtime objects and the replicated records)
and nothing else; it tells the vhost roles (node/runtime/vhost_roles.py) when placement
changes, and access control when permissions do.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from cluster import shards
from node.amqp import errors
from node.config import Settings
from node.exchanges.base import Destination
from node.exchanges.registry import EXCHANGE_TYPES
from node.policies import matching_policy
from node.queues import types
from node.runtime.access import AccessControl
from node.runtime.definitions import DefinitionService, decode_args
from node.runtime.state import Elsewhere, Runtime
from node.runtime.stores import VhostStores
from node.runtime.vhost_roles import VhostRoles
from node.shards.link import Links, LinkServer
from node.shards.remote_queue import RemoteQueue
from node.vhost import VirtualHost

if TYPE_CHECKING:
    from cluster.raft import MetadataStore

log = logging.getLogger("warren.broker")


class DefinitionsMirror:
    """Applies each committed definition change to this node's runtime, in Raft's order."""

    def __init__(self, settings: Settings, metadata: "MetadataStore", runtime: Runtime,
                 stores: VhostStores, roles: VhostRoles, access: AccessControl,
                 definitions: DefinitionService) -> None:
        self.settings = settings
        self.metadata = metadata
        self.runtime = runtime
        self.stores = stores
        self.roles = roles
        self.access = access
        self.definitions = definitions
        # the queue links to the nodes that own the shards this node does not
        self.links = Links(settings.node_name, self._cluster_address, roles.connect,
                           applied=lambda: metadata.applied_here,
                           vhosts=lambda: runtime.vhosts)

    def _cluster_address(self, node: str) -> str | None:
        return (self.runtime.nodes.get(node) or {}).get("forward")

    # ------------------------------------------------------------------------------
    # a vhost's runtime: open, close, build from a snapshot
    # ------------------------------------------------------------------------------
    def _open_vhost(self, name: str) -> VirtualHost:
        vh = self.runtime.vhosts.get(name)
        if vh is not None:
            return vh
        # only the owner holds the vhost's messages
        store = self.stores.open(name) if self.runtime.owns(name) else None
        vh = VirtualHost(name, store, self.settings.queue_memory_messages,
                         on_queue_unused=self.definitions.queue_unused,
                         on_exchange_unused=self.definitions.exchange_unused)
        self.runtime.vhosts[name] = vh
        self._open_shards(vh)
        return vh

    def _open_shards(self, vh: VirtualHost) -> None:
        """Open the stores of the vhost's shards this node runs (shard 0's is the vhost's
        own), so that each has its replication source before its first queue."""
        for unit in shards.units_of(vh.name, self.runtime.vhost_defs.get(vh.name))[1:]:
            if self.runtime.owns(unit) and unit not in vh.unit_stores:
                vh.unit_stores[unit] = self.stores.open(unit)

    def _add_queue(self, vh: VirtualHost, q: dict) -> None:
        """A durable queue as Raft has it, in the shard its record names: a `Queue` on this
        node's store when this node runs the shard, else a stand-in for the queue on the
        shard's owner (`_remote_queue`)."""
        unit = shards.unit_key(vh.name, shards.queue_shard(q))
        owner = self._exclusive_owner(vh, q)
        if not self.runtime.owns(unit) and (unit != vh.name or self.runtime.sharded(vh.name)):
            self._remote_queue(vh, q, unit, owner)
            return
        store = vh.store if unit == vh.name else vh.unit_stores.get(unit)
        vh.add_queue(q["name"], durable=q.get("durable", True), exclusive_owner=owner,
                     auto_delete=q["auto_delete"], arguments=decode_args(q["arguments"]),
                     recover=True, declaration=q.get("id", ""), unit=unit, store=store,
                     in_raft=True)

    def _exclusive_owner(self, vh: VirtualHost, q: dict) -> Any:
        """An exclusive queue's connection: the one declaring it on this node, else a
        stand-in that refuses it to every connection here."""
        if not q.get("exclusive"):
            return None
        claimed = self.definitions.exclusive_claims.get((vh.name, q["name"], q.get("id", "")))
        return claimed if claimed is not None else Elsewhere(q.get("exclusive_node", ""))

    def _remote_queue(self, vh: VirtualHost, q: dict, unit: str, owner: Any) -> None:
        """A queue of a shard another node runs: served from here over the queue link to
        that node (node/shards/remote_queue.py)."""
        args = decode_args(q["arguments"])
        policy = matching_policy(vh.policies, "queue", q["name"], types.queue_type(args))
        rq = RemoteQueue(vh.name, q["name"], unit, self.links, self.runtime.owner_of,
                         durable=q.get("durable", True), exclusive_owner=owner,
                         auto_delete=q["auto_delete"], arguments=args,
                         declaration=q.get("id", ""),
                         policy=policy["definition"] if policy else None)
        rq.policy_name = policy["name"] if policy else None
        vh.queues[q["name"]] = rq  # type: ignore[assignment]  # a Queue to its channels

    def _close_vhost(self, name: str, delete_data: bool, why: str = "is deleted",
                     keep_store: bool = False) -> None:
        vh = self.runtime.vhosts.pop(name, None)
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
        if self.runtime.owns(name):
            self.roles.prepare_takeover(name)
        else:
            self.roles.step_down(name, why)
        self._close_vhost(name, delete_data=False, why=why,
                          keep_store=self.roles.enabled)

    def _change_shard_role(self, unit: str, why: str) -> None:
        """A shard of a sharded vhost changed owner to or from this node: only its queues
        are rebuilt, on the other side (a `Queue` here, a `RemoteQueue` elsewhere); no
        client connection is closed, and the consumers follow their queue, as a quorum
        queue's do on a leader change: what the old owner delivered and never saw acked
        comes again from the new one, redelivered, and acks of the old deliveries are
        dropped (the old queue object is closed: its settles only count)."""
        vhost, _ = shards.split(unit)
        vh = self.runtime.vhosts.get(vhost)
        mine = self.runtime.owns(unit)
        if mine:
            self.roles.prepare_takeover(unit)
        else:
            self.roles.step_down(unit, why)
        if vh is None:
            return
        if mine:
            store = self.stores.open(unit)
            vh.unit_stores[unit] = store
        else:
            store = None
            vh.unit_stores.pop(unit, None)
        if unit == vhost:
            vh.store = store
        owners = {name: q.exclusive_owner for name, q in vh.queues.items()
                  if q.unit == unit and q.in_raft and q.exclusive_owner is not None}
        following: dict[str, list[Any]] = {}
        for name, q in list(vh.queues.items()):
            if q.unit == unit and q.in_raft:
                # this node's clients' consumers follow; another node's (over a queue
                # link) hear "moved" and subscribe at the new owner from their own node
                following[name] = [c for c in q.consumers if not isinstance(c.owner, LinkServer)]
                for link in {id(c.owner): c.owner for c in q.consumers
                             if isinstance(c.owner, LinkServer)}.values():
                    link.cancel_consumers_of(q)
                vh.detach_queue(name)  # a remote one ends its subscriptions at the owner
                q.consumers.clear()
                q.exclusive_consumer = None
        for record in self.metadata.queues_of(vhost):
            if shards.unit_key(vhost, shards.queue_shard(record)) == unit:
                self._add_queue(vh, record)
                kept = owners.get(record["name"])
                rebuilt = vh.queues.get(record["name"])
                if kept is not None and rebuilt is not None:
                    rebuilt.exclusive_owner = kept  # its connection stays
        for name, consumers in following.items():
            rebuilt = vh.queues.get(name)
            for c in consumers:
                if rebuilt is None:  # deleted meanwhile
                    c.owner.cancel_consumers_of(c.queue)
                    continue
                c.queue = rebuilt
                if isinstance(rebuilt, RemoteQueue):
                    rebuilt.adopt(c)
                else:
                    rebuilt.add_consumer(c)
        if mine:
            self.stores.drop_orphaned_messages(unit, vh.store_keys(unit))

    def rebuild(self, state: dict) -> None:
        """Make the runtime match a full snapshot (at start, or when Raft installs one)."""
        self.runtime.users = {u["name"]: u for u in state.get("users", {}).values()}
        self.runtime.permissions = {v: dict(p) for v, p in state.get("permissions", {}).items()}
        self.runtime.policies = {v: dict(p) for v, p in state.get("policies", {}).items()}
        self.runtime.nodes = dict(state.get("nodes", {}))
        self.runtime.vhost_defs = dict(state.get("vhosts", {}))
        self.runtime.shard_defs = dict(state.get("shards", {}))
        self.runtime.set_units()
        wanted = set(state.get("vhosts", {}))
        for name in list(self.runtime.vhosts):
            if name not in wanted:
                self._close_vhost(name, delete_data=True)
        for name in wanted:
            self._build_vhost(name, state)
        self.roles.reconcile_all()
        self.links.owners_changed()
        for name in wanted:
            self._drop_orphans(name)

    def _drop_orphans(self, name: str) -> None:
        """On the owner, once its queues are built from the definitions (at start, when it
        takes the vhost over, after a snapshot): the stored messages of every queue the
        definitions no longer have go, for every copy (the deletes are replicated).  A
        queue deleted while the owner was down, failing over or moving was never deleted
        from the copies: no owner applied the delete to a store."""
        vh = self.runtime.vhosts.get(name)
        if vh is not None:
            for unit in list(vh.unit_stores):
                self.stores.drop_orphaned_messages(unit, vh.store_keys(unit))

    def _build_vhost(self, name: str, state: dict) -> None:
        """Open a vhost's runtime from the definitions (its store only on its owner), or
        bring an open one in line with them (a snapshot installed after a gap)."""
        vh = self.runtime.vhosts.get(name)
        sharded = self.runtime.sharded(name)
        if vh is not None and not sharded and (vh.store is not None) != self.runtime.owns(name):
            self._change_role(name, why="changed owner")
            vh = None
        if vh is not None:
            self._prune_vhost(vh, state)
            for unit in shards.units_of(name, self.runtime.vhost_defs.get(name)):
                if (unit in vh.unit_stores) != self.runtime.owns(unit):
                    self._change_shard_role(unit, why="changed owner")
        vh = self._open_vhost(name)
        vh.policies = self.runtime.policies.setdefault(name, {})
        vh.limits = dict(state["vhosts"][name].get("limits") or {})
        for x in state.get("exchanges", {}).get(name, {}).values():
            if x["type"] in EXCHANGE_TYPES:
                vh.add_exchange(x["name"], x["type"], x.get("durable", True), x["auto_delete"],
                                x["internal"], decode_args(x["arguments"])).in_raft = True
        for q in state.get("queues", {}).get(name, {}).values():
            if q["name"] not in vh.queues:
                self._add_queue(vh, q)
        for b in state.get("bindings", {}).get(name, {}).values():
            vh.bind(b["source"], Destination(b["destination_type"], b["destination"]),
                    b["routing_key"], decode_args(b["arguments"]))

    def _prune_vhost(self, vh: VirtualHost, state: dict) -> None:
        """Drop durable things the definitions no longer have (deleted while we lagged)."""
        queues = state.get("queues", {}).get(vh.name, {})
        exchanges = state.get("exchanges", {}).get(vh.name, {})
        for qname, q in list(vh.queues.items()):
            if q.in_raft and (
                    qname not in queues or q.declaration != queues[qname].get("id", "")):
                self.runtime.drop_queue(vh, qname)  # gone, or deleted and declared again
        for xname, ex in list(vh.exchanges.items()):
            if ex.durable and xname not in exchanges:
                vh.remove_exchange(xname)
        wanted = {(b["source"], b["destination_type"], b["destination"], b["routing_key"])
                  for b in state.get("bindings", {}).get(vh.name, {}).values()}
        for b in vh.bindings():
            if ((b.source, b.destination.kind, b.destination.name, b.routing_key) not in wanted
                    and self.definitions.binding_is_durable(vh, b.source, b.destination)):
                vh.unbind(b.source, b.destination, b.routing_key, b.arguments)
        vh.apply_policies(self.runtime.policies.setdefault(vh.name, {}))

    # ------------------------------------------------------------------------------
    # committed definition changes, one handler per op
    # ------------------------------------------------------------------------------
    def on_event(self, cmd: dict, result: dict) -> None:
        if not self.runtime.live or not result.get("ok"):
            return
        op = cmd.get("op")
        try:
            handler = getattr(self, "_ev_" + str(op), None)
            if handler is not None:
                handler(cmd, result)
        except Exception:
            log.exception("applying committed definition %r failed", op)

    def _ev_reset(self, cmd: dict, result: dict) -> None:
        self.rebuild(result["state"])

    def _ev_bootstrap(self, cmd: dict, result: dict) -> None:
        if not result.get("applied"):
            return
        self.runtime.put_unit({
            "name": cmd["vhost"], "description": "Default virtual host", "tags": [],
            "default_queue_type": "classic", "owner": cmd.get("owner"),
            "epoch": 1 if cmd.get("owner") else 0, "replicas": [], "in_sync": [],
            "replication_factor": None})
        if cmd.get("owner") == self.settings.node_name:
            self.roles.grant(cmd["vhost"], 1)
        self._open_vhost(cmd["vhost"])
        self.roles.reconcile(cmd["vhost"])
        self.runtime.users[cmd["user"]] = {"name": cmd["user"], "password_hash": cmd["password_hash"],
                                   "hashing": cmd["hashing"], "tags": list(cmd["tags"])}
        self.runtime.permissions.setdefault(cmd["vhost"], {})[cmd["user"]] = {
            "user": cmd["user"], "vhost": cmd["vhost"], "configure": ".*", "write": ".*",
            "read": ".*"}

    def _ev_add_vhost(self, cmd: dict, result: dict) -> None:
        if "vhost" in result:
            self.runtime.put_unit(result["vhost"])
            for record in [result["vhost"], *result.get("shards", [])]:
                if result.get("created"):
                    self.runtime.put_unit(record)
                    if record.get("owner") == self.settings.node_name:
                        self.roles.grant(record["name"], record["epoch"])
        self._open_vhost(cmd["name"])
        for unit in shards.units_of(cmd["name"], self.runtime.vhost_defs.get(cmd["name"])):
            self.roles.reconcile(unit)

    def _ev_set_vhost_shards(self, cmd: dict, result: dict) -> None:
        self.runtime.put_unit(result["vhost"])
        for record in result.get("shards", []):
            self.runtime.put_unit(record)
            if record.get("owner") == self.settings.node_name:
                self.roles.grant(record["name"], record["epoch"])
        vh = self.runtime.vhosts.get(cmd["name"])
        if vh is not None:
            self._open_shards(vh)
        for record in result.get("shards", []):
            self.roles.reconcile(record["name"])

    def _ev_set_vhost_owner(self, cmd: dict, result: dict) -> None:
        name = cmd["name"]
        was_mine = self.runtime.owns(name)
        self.runtime.put_unit(result["vhost"])
        if result["vhost"].get("owner") == self.settings.node_name:
            self.roles.grant(name, result["vhost"]["epoch"])
        if self.runtime.sharded(shards.split(name)[0]):
            if was_mine != self.runtime.owns(name):
                self._change_shard_role(
                    name, why=f"moved to node '{result['vhost'].get('owner')}'")
            self.roles.reconcile(name)
            # publishes that waited for the old owner go to the new one before any other
            # (after reconcile: on this node, only into a store its replication source
            # has attached to, so that none is confirmed before the replicas have it)
            self.links.owners_changed()
            return
        if was_mine != self.runtime.owns(name) and name in self.runtime.vhosts:
            # the vhost moves (or fails over): clients reconnect (to any node) and reach
            # the new owner
            self._change_role(name, why=f"moved to node '{result['vhost'].get('owner')}'")
            self._build_vhost(name, self.metadata.snapshot())
            self._drop_orphans(name)
        # clients this node forwards to the old owner: it may be hung or cut off and never
        # close them itself
        new_owner = result["vhost"].get("owner")
        for spliced in list(self.runtime.forwarded.get(name, ())):
            if spliced.owner != new_owner:
                spliced.close(errors.CONNECTION_FORCED,
                              f"CONNECTION_FORCED - vhost '{name}' moved to node "
                              f"'{new_owner}'; reconnect")
        self.roles.reconcile(name)

    def _ev_set_vhost_replicas(self, cmd: dict, result: dict) -> None:
        self.runtime.put_unit(result["vhost"])
        self.roles.reconcile(cmd["name"])

    def _ev_set_in_sync(self, cmd: dict, result: dict) -> None:
        self.runtime.put_unit(result["vhost"])
        self.roles.reconcile(cmd["name"])

    def _ev_set_in_sync_many(self, cmd: dict, result: dict) -> None:
        for change, outcome in zip(cmd["changes"], result["results"], strict=True):
            if outcome.get("ok"):
                self._ev_set_in_sync(change, outcome)

    def _ev_register_node(self, cmd: dict, result: dict) -> None:
        self.runtime.nodes[cmd["name"]] = result.get("node") or {k: cmd.get(k) for k in (
            "name", "raft", "forward", "amqp", "http")}
        self.roles.reconcile_all()  # followers of that node's vhosts use its address

    def _ev_forget_node(self, cmd: dict, result: dict) -> None:
        self.runtime.nodes.pop(cmd["name"], None)
        if result.get("vhosts"):
            snapshot = self.metadata.snapshot()
            self.runtime.vhost_defs = dict(snapshot.get("vhosts", {}))
            self.runtime.shard_defs = dict(snapshot.get("shards", {}))
            self.runtime.set_units()
            self.roles.reconcile_all()
        # its shards have other owners now: what waited for it goes there, and this node
        # stops trying to reach it
        self.links.owners_changed()
        self.links.forget(cmd["name"])

    def _ev_set_vhost_limits(self, cmd: dict, result: dict) -> None:
        self.runtime.vhost_defs[cmd["name"]] = result["vhost"]  # the record, limits included
        vh = self.runtime.vhosts.get(cmd["name"])
        if vh is not None:
            vh.limits = dict(result["vhost"].get("limits") or {})

    def _ev_delete_vhost(self, cmd: dict, result: dict) -> None:
        for unit in result.get("shards", []):
            self.roles.step_down(unit, "the vhost is deleted")
            self.roles.forget(unit)
            self.stores.close(unit, delete_data=True)
            self.runtime.shard_defs.pop(unit, None)
            self.runtime.units.pop(unit, None)
        self.roles.step_down(cmd["name"], "the vhost is deleted")
        self.roles.forget(cmd["name"])
        self._close_vhost(cmd["name"], delete_data=True)
        self.runtime.vhost_defs.pop(cmd["name"], None)
        self.runtime.units.pop(cmd["name"], None)
        self.runtime.permissions.pop(cmd["name"], None)
        self.runtime.policies.pop(cmd["name"], None)

    def _ev_add_user(self, cmd: dict, result: dict) -> None:
        before = self.runtime.users.get(cmd["name"])
        self.runtime.users[cmd["name"]] = {"name": cmd["name"], "password_hash": cmd["password_hash"],
                                   "hashing": cmd.get("hashing", ""),
                                   "tags": list(cmd.get("tags", []))}
        if before is not None and before.get("password_hash") != cmd["password_hash"]:
            # PUT /api/users/<name> with a new password is how a password changes
            self.access.close_user_connections(cmd["name"],
                                        f"credentials of user '{cmd['name']}' changed")

    def _ev_delete_user(self, cmd: dict, result: dict) -> None:
        self.runtime.users.pop(cmd["name"], None)
        for perms in self.runtime.permissions.values():
            perms.pop(cmd["name"], None)
        self.access.forget_permission_caches()
        self.access.close_user_connections(cmd["name"], f"user '{cmd['name']}' is deleted")

    def _ev_change_password(self, cmd: dict, result: dict) -> None:
        u = self.runtime.users.get(cmd["name"])
        if u is not None:
            u["password_hash"] = cmd["password_hash"]
            u["hashing"] = cmd.get("hashing", u.get("hashing", ""))
        self.access.close_user_connections(cmd["name"], f"credentials of user '{cmd['name']}' changed")

    def _ev_set_user_tags(self, cmd: dict, result: dict) -> None:
        u = self.runtime.users.get(cmd["name"])
        if u is not None:
            u["tags"] = list(cmd["tags"])

    def _ev_set_permissions(self, cmd: dict, result: dict) -> None:
        self.runtime.permissions.setdefault(cmd["vhost"], {})[cmd["user"]] = {
            "user": cmd["user"], "vhost": cmd["vhost"], "configure": cmd["configure"],
            "write": cmd["write"], "read": cmd["read"]}
        self.access.forget_permission_caches()

    def _ev_clear_permissions(self, cmd: dict, result: dict) -> None:
        self.runtime.permissions.get(cmd["vhost"], {}).pop(cmd["user"], None)
        self.access.forget_permission_caches()
        self.access.close_user_connections(
            cmd["user"], f"access to vhost '{cmd['vhost']}' revoked for user '{cmd['user']}'",
            cmd["vhost"])

    def _ev_set_policy(self, cmd: dict, result: dict) -> None:
        policy = result.get("policy") or {k: cmd.get(k) for k in (
            "vhost", "name", "pattern", "definition", "priority", "apply_to")}
        self.runtime.policies.setdefault(cmd["vhost"], {})[cmd["name"]] = policy
        self._apply_policies(cmd["vhost"])

    def _ev_clear_policy(self, cmd: dict, result: dict) -> None:
        self.runtime.policies.get(cmd["vhost"], {}).pop(cmd["name"], None)
        self._apply_policies(cmd["vhost"])

    def _apply_policies(self, vhost: str) -> None:
        vh = self.runtime.vhosts.get(vhost)
        if vh is not None:
            vh.apply_policies(self.runtime.policies.setdefault(vhost, {}))

    def _ev_declare_exchange(self, cmd: dict, result: dict) -> None:
        vh = self.runtime.vhosts.get(cmd["vhost"])
        x = result.get("exchange")
        if vh is None or x is None or x["type"] not in EXCHANGE_TYPES:
            return
        vh.add_exchange(x["name"], x["type"], x["durable"], x["auto_delete"], x["internal"],
                        decode_args(x["arguments"])).in_raft = True

    def _ev_delete_exchange(self, cmd: dict, result: dict) -> None:
        vh = self.runtime.vhosts.get(cmd["vhost"])
        if vh is not None:
            vh.remove_exchange(cmd["name"])
            for name in result.get("auto_deleted_exchanges", []):
                vh.remove_exchange(name)

    def _ev_declare_queue(self, cmd: dict, result: dict) -> None:
        vh = self.runtime.vhosts.get(cmd["vhost"])
        q = result.get("queue")
        if vh is None or q is None:
            return
        existing = vh.queues.get(q["name"])
        if (existing is not None and existing.in_raft
                and existing.declaration != q.get("id", "")):
            self.runtime.drop_queue(vh, q["name"])  # a delete this runtime missed
        if q["name"] not in vh.queues:
            self._add_queue(vh, q)

    def _ev_delete_queue(self, cmd: dict, result: dict) -> None:
        vh = self.runtime.vhosts.get(cmd["vhost"])
        if vh is not None:
            self.runtime.drop_queue(vh, cmd["name"])
            for name in result.get("auto_deleted_exchanges", []):
                vh.remove_exchange(name)

    def _ev_bind(self, cmd: dict, result: dict) -> None:
        vh = self.runtime.vhosts.get(cmd["vhost"])
        if vh is not None:
            vh.bind(cmd["source"], Destination(cmd["destination_type"], cmd["destination"]),
                    cmd["routing_key"], decode_args(cmd.get("arguments")))

    def _ev_unbind(self, cmd: dict, result: dict) -> None:
        vh = self.runtime.vhosts.get(cmd["vhost"])
        if vh is not None:
            vh.unbind(cmd["source"], Destination(cmd["destination_type"], cmd["destination"]),
                      cmd["routing_key"], decode_args(cmd.get("arguments")))
            for name in result.get("auto_deleted_exchanges", []):
                vh.remove_exchange(name)
