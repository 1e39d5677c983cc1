"""The service that submits definition changes (channels, the management API, warrenctl),
with the checks made before a change: redeclaration equivalence and queue arguments.

Which path a definition takes (decision 1 and 2 of the design brief):
  * durable exchanges, durable non-exclusive queues and bindings between durable things go
    through Raft (`submit`); the runtime changes only when the committed command comes back
    as an event (node/definitions_mirror.py), so every node sees the same order;
  * transient and exclusive things live only in this node's memory and die with it (or
    with their connection), as in RabbitMQ: they are changed here, directly.

It submits through Raft, reads the runtime state (the vhosts, for transient things and
auto-delete; the vhost records and members, for add_vhost) and asks the placement where a
new vhost goes.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

from cluster import placement, shards
from node.amqp import errors
from node.amqp.errors import AMQPError, ChannelError, resource_text
from node.amqp.fields import AMQPSyntaxError, decode_table, encode_table
from node.config import Settings
from node.exchanges.base import Destination, Exchange
from node.policies import matching_policy
from node.queues import types
from node.queues.queue import Queue, new_declaration
from node.queues.settings import OVERFLOW_MODES
from node.runtime.commit import commit
from node.runtime.placement import Placement
from node.runtime.state import Runtime
from node.vhost import VirtualHost

if TYPE_CHECKING:
    from cluster.raft import MetadataStore

log = logging.getLogger("warren.broker")

# Queue arguments RabbitMQ compares on redeclaration (rabbit_amqqueue:assert_args_equivalence)
EQUIVALENT_QUEUE_ARGS = (
    "x-expires", "x-message-ttl", "x-dead-letter-exchange", "x-dead-letter-routing-key",
    "x-max-length", "x-max-length-bytes", "x-max-priority", "x-overflow", "x-queue-mode",
    "x-queue-type", "x-single-active-consumer", "x-delivery-limit",
)
EQUIVALENT_EXCHANGE_ARGS = ("alternate-exchange",)


def encode_args(args: dict) -> bytes:
    return encode_table(args) if args else b""


def check_vhost_name(name: str) -> None:
    """A vhost name must be one a client can open: connection.open carries it as an AMQP
    short string (1 to 255 bytes of UTF-8, as RabbitMQ requires), without control
    characters (it shows up in logs, URLs and file names)."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if not 0 < size <= 255:
        raise errors.precondition(f"invalid vhost name '{name[:64]}': it must be 1 to 255 "
                                  f"bytes of UTF-8, not {size}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise errors.precondition(f"invalid vhost name {name[:64]!r}: control characters "
                                  "are not allowed")


# the values RabbitMQ takes: a leader locator (3.10's quorum queues, 4.0's every queue), and
# the classic queues' older master locator; random and min-masters count as balanced here
LOCATOR_VALUES = {"x-queue-leader-locator": ("client-local", "balanced", "random"),
                  "x-queue-master-locator": ("client-local", "min-masters", "random")}


def leader_locator(args: dict, policies: dict, name: str) -> str:
    """A queue's leader locator: its argument, else its policy's key, else client-local.
    RabbitMQ's older classic-queue locators count as balanced (min-masters, random)."""
    value = args.get("x-queue-leader-locator", args.get("x-queue-master-locator"))
    if value is None:
        policy = matching_policy(policies, "queue", name, types.queue_type(args))
        if policy is not None:
            definition = policy["definition"]
            value = definition.get("queue-leader-locator",
                                   definition.get("queue-master-locator"))
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    return "client-local" if value in (None, "client-local") else "balanced"


def check_shard_count(count: Any) -> None:
    if isinstance(count, bool) or not isinstance(count, int) \
            or not 1 <= count <= shards.MAX_SHARDS:
        raise errors.precondition(f"shards must be a whole number from 1 to "
                                  f"{shards.MAX_SHARDS}, got {count!r}")


def decode_args(blob: bytes | None) -> dict:
    if not blob:
        return {}
    try:
        return decode_table(blob, 0)[0]
    except AMQPSyntaxError:
        return {}


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if v is None:
        return "none"
    return str(v)


class DefinitionService:
    """Definition changes, checked, then committed through Raft (durable things) or made
    here (transient and exclusive ones)."""

    def __init__(self, settings: Settings, metadata: "MetadataStore", runtime: Runtime,
                 placement: Placement) -> None:
        self.settings = settings
        self.metadata = metadata
        self.runtime = runtime
        self.placement = placement
        self._auto_deleting: set[int] = set()  # exchanges whose auto-delete is under way
        # (vhost, queue, declaration id) -> the connection declaring that exclusive queue
        # of a sharded vhost through Raft: the mirror hands the queue to it
        self.exclusive_claims: dict[tuple[str, str, str], Any] = {}

    # ------------------------------------------------------------------------------
    # submitting to Raft; exchanges, queues, bindings
    # ------------------------------------------------------------------------------
    async def submit(self, command: dict) -> dict:
        return await commit(self.metadata, command)

    async def declare_exchange(self, vh: VirtualHost, name: str, type_name: str, durable: bool,
                               auto_delete: bool, internal: bool, args: dict) -> Exchange:
        if durable or self.runtime.sharded(vh.name):
            result = await self.submit({
                "op": "declare_exchange", "vhost": vh.name, "name": name, "type": type_name,
                "durable": durable, "auto_delete": auto_delete, "internal": internal,
                "arguments": encode_args(args)})
            vh = self.runtime.vhosts.get(vh.name, vh)  # rebuilt meanwhile? (see declare_queue)
            ex = vh.exchanges.get(name)
            if ex is None:  # deleted again before we looked
                raise errors.not_found("exchange", name, vh.name)
            if not result.get("created"):
                self.check_exchange_equivalent(ex, type_name, durable, auto_delete, internal,
                                               args)
            return ex
        return vh.add_exchange(name, type_name, False, auto_delete, internal, args)

    async def delete_exchange(self, vh: VirtualHost, name: str, if_unused: bool) -> None:
        ex = vh.exchanges.get(name)
        if ex is None:
            return
        if if_unused and ex.bindings:
            raise errors.precondition(f"{resource_text('exchange', name, vh.name)} in use")
        if ex.in_raft:
            await self.submit({"op": "delete_exchange", "vhost": vh.name, "name": name,
                               "if_unused": if_unused,
                               "keep_exchanges": self._transiently_bound(vh)})
        # transient bindings and transient exchanges are only here
        vh.remove_exchange(name)

    async def declare_queue(self, vh: VirtualHost, name: str, durable: bool, owner: Any,
                            auto_delete: bool, args: dict) -> Queue:
        limit = vh.limits.get("max-queues")
        if limit is not None and name not in vh.queues and len(vh.queues) >= limit:
            raise errors.precondition(f"cannot declare queue '{name}': queue limit in vhost "
                                      f"'{vh.name}' ({limit}) is reached")
        sharded = self.runtime.sharded(vh.name)
        if durable and owner is None or sharded:
            cmd: dict[str, Any] = {
                   "op": "declare_queue", "vhost": vh.name, "name": name, "durable": durable,
                   "auto_delete": auto_delete, "exclusive": owner is not None,
                   "arguments": encode_args(args), "id": new_declaration()}
            if owner is not None:  # its connection is here: the mirror gives it the queue
                cmd["exclusive_node"] = self.settings.node_name
                self.exclusive_claims[(vh.name, name, cmd["id"])] = owner
            # exclusive and server-named queues are always client-local (RabbitMQ)
            local = owner is not None or name.startswith("amq.gen-")
            shard = self.queue_shard(vh, name, args, client_local=local)
            if shard:
                cmd["shard"] = shard
            try:
                result = await self.submit(cmd)
            finally:
                self.exclusive_claims.pop((vh.name, name, cmd["id"]), None)
            # the vhost's runtime may have been rebuilt while the change committed (a
            # failover or a move of the vhost): the queue is in the new one
            vh = self.runtime.vhosts.get(vh.name, vh)
            q = vh.queues.get(name)
            if q is None:
                raise errors.not_found("queue", name, vh.name)
            if not result.get("created"):
                if q.exclusive_owner is not None and q.exclusive_owner is not owner:
                    raise errors.resource_locked(name, vh.name)
                self.check_queue_equivalent(q, durable, owner is not None, auto_delete, args)
            return q
        # transient and exclusive queues never leave this node (decision 2)
        return vh.add_queue(name, durable=durable, exclusive_owner=owner,
                            auto_delete=auto_delete, arguments=args)

    def queue_shard(self, vh: VirtualHost, name: str, args: dict,
                    client_local: bool = False) -> int:
        """The shard a new queue of a sharded vhost goes to, by its leader locator (the
        `x-queue-leader-locator` argument, else the policy's `queue-leader-locator`, else
        client-local, as in RabbitMQ): client-local is the least used shard this node
        owns, balanced (or client-local on a node that owns none) the least used one."""
        record = self.runtime.vhost_defs.get(vh.name)
        count = shards.count(record)
        if count == 1:
            return 0
        locator = "client-local" if client_local else leader_locator(args, vh.policies, name)
        queues = [{"shard": shards.split(q.unit)[1]} for q in vh.queues.values() if q.in_raft]
        if locator == "client-local":
            local = [k for k in range(count)
                     if self.runtime.owns(shards.unit_key(vh.name, k))]
            if local:
                counts = {k: 0 for k in local}
                for q in queues:
                    if q["shard"] in counts:
                        counts[q["shard"]] += 1
                return min(local, key=lambda k: (counts[k], k))
        return shards.balanced_shard(count, queues)

    def drop_stale_exclusive(self, node: str | None = None) -> None:
        """Delete, through Raft, the exclusive queues of sharded vhosts whose connection
        was on ``node`` (default: this node, at start, when none of them can be open)."""
        node = node or self.settings.node_name
        for vh in list(self.runtime.vhosts.values()):
            for q in list(vh.queues.values()):
                if q.in_raft and getattr(q.exclusive_owner, "node", None) == node:
                    asyncio.ensure_future(self._quietly(self.delete_queue(vh, q)))

    async def delete_queue(self, vh: VirtualHost, q: Queue) -> None:
        if q.in_raft:
            await self.submit({"op": "delete_queue", "vhost": vh.name, "name": q.name,
                               "keep_exchanges": self._transiently_bound(vh)})
        self.runtime.drop_queue(vh, q.name)

    def binding_is_durable(self, vh: VirtualHost, source: str, dest: Destination) -> bool:
        src = vh.exchanges.get(source)
        if src is None or not src.in_raft:
            return False
        if dest.kind == "queue":
            q = vh.queues.get(dest.name)
            return q is not None and q.in_raft
        d = vh.exchanges.get(dest.name)
        return d is not None and d.in_raft

    def _transiently_bound(self, vh: VirtualHost) -> list[str]:
        """Durable auto-delete exchanges with bindings Raft never saw (to transient or
        exclusive queues and exchanges): the state machine must not auto-delete them when
        their last durable binding goes, since RabbitMQ keeps them while any binding is
        left."""
        return sorted(ex.name for ex in vh.exchanges.values()
                      if ex.auto_delete and ex.durable and any(
                          not self.binding_is_durable(vh, ex.name, b.destination)
                          for b in ex.bindings.values()))

    async def bind(self, vh: VirtualHost, source: str, dest: Destination, routing_key: str,
                   args: dict) -> None:
        await self._change_binding("bind", vh, source, dest, routing_key, args)

    async def unbind(self, vh: VirtualHost, source: str, dest: Destination, routing_key: str,
                     args: dict) -> None:
        await self._change_binding("unbind", vh, source, dest, routing_key, args)

    async def _change_binding(self, op: str, vh: VirtualHost, source: str, dest: Destination,
                              routing_key: str, args: dict) -> None:
        """Through Raft when both ends are durable (it comes back as an event), else here."""
        if self.binding_is_durable(vh, source, dest):
            await self.submit({
                "op": op, "vhost": vh.name, "source": source, "destination": dest.name,
                "destination_type": dest.kind, "routing_key": routing_key,
                "arguments": encode_args(args), "keep_exchanges": self._transiently_bound(vh)})
        elif op == "bind":
            vh.bind(source, dest, routing_key, args)
        else:
            vh.unbind(source, dest, routing_key, args)
            ex = vh.exchanges.get(source)
            if (ex is not None and ex.durable and ex.auto_delete and not ex.bindings
                    and self.runtime.owns(vh.name)):
                # RabbitMQ deletes an auto-delete exchange with its last binding, before
                # unbind-ok: a publish right after it finds no exchange.  The durable
                # exchange goes through Raft, so the unbind waits for that.
                await self._quietly(self._delete_auto_deleted(vh, ex))

    # --- auto-delete ---------------------------------------------------------------
    def queue_unused(self, q: Queue) -> None:
        vh = self.runtime.vhosts.get(q.vhost)
        if vh is None or vh.queues.get(q.name) is not q:
            return
        asyncio.ensure_future(self._quietly(self.delete_queue(vh, q)))

    def exchange_unused(self, ex: Exchange) -> None:
        vh = self.runtime.vhosts.get(ex.vhost)
        if vh is None:
            return
        if not ex.in_raft:
            vh.remove_exchange(ex.name)
            return
        if not self.runtime.owns(vh.name) or self.runtime.sharded(vh.name):
            # only the owner sees every binding, transient ones included (in a sharded
            # vhost Raft sees them all, and auto-deletes the exchange with the last one)
            return
        # The state machine deletes a durable exchange when its last *durable* binding goes;
        # when the last one was to a transient or exclusive queue, Raft never saw it, so we
        # ask.  Later in this turn, so that an auto-delete already committed with the unbind
        # has been applied and we do not ask twice.
        asyncio.get_event_loop().call_soon(self._delete_unused_durable_exchange, vh, ex)

    def _delete_unused_durable_exchange(self, vh: VirtualHost, ex: Exchange) -> None:
        if vh.exchanges.get(ex.name) is not ex or ex.bindings:
            return
        asyncio.ensure_future(self._quietly(self._delete_auto_deleted(vh, ex)))

    async def _delete_auto_deleted(self, vh: VirtualHost, ex: Exchange) -> None:
        """Delete an unused durable auto-delete exchange once, however many ask."""
        deleting = self._auto_deleting
        if id(ex) in deleting:
            return
        deleting.add(id(ex))
        try:
            await self.delete_exchange(vh, ex.name, True)
        finally:
            deleting.discard(id(ex))

    @staticmethod
    async def _quietly(coro: Any) -> None:
        try:
            await coro
        except AMQPError as e:
            log.warning("auto-delete failed: %s", e.reply_text)

    # ------------------------------------------------------------------------------
    # administration (management API, warrenctl)
    # ------------------------------------------------------------------------------
    async def add_vhost(self, name: str, description: str = "", tags: list | None = None,
                        default_queue_type: str = "classic", owner: str | None = None,
                        replicas: int | None = None, shard_count: int = 1) -> None:
        """Create a vhost (or update its description, tags and default queue type).
        ``replicas`` is the number of copies, the owner's included (default: the node's
        --replication-factor), capped at the cluster's size; ``shard_count`` how many
        shards it is split into (their owners spread over the nodes)."""
        if owner is not None:
            await self.placement.require_running(owner)
        check_vhost_name(name)
        if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int)
                                     or replicas < 1):
            raise errors.precondition(f"replicas must be a whole number of copies >= 1, got "
                                      f"{replicas!r}")
        check_shard_count(shard_count)
        cmd: dict[str, Any] = {"op": "add_vhost", "name": name, "description": description,
                               "tags": tags or [], "default_queue_type": default_queue_type}
        if name not in self.runtime.vhost_defs:  # placement is decided once, at creation
            running = await self.placement.running_members() if shard_count > 1 else None
            owners = self.placement.pick_owners(shard_count, first=owner, running=running)
            cmd["owner"] = owner = owners[0]
            cmd["shard_placements"] = self.placement.shard_placements(owners[1:], replicas)
            members = sorted(self.runtime.nodes)
            record: dict[str, Any] = {"owner": owner, "replicas": [],
                                      "replication_factor": replicas}
            want = placement.wanted_replicas(record, self.settings.replication_factor,
                                             len(members))
            cmd["replicas"] = placement.repaired_replicas(
                record, members, want, placement.load(self.runtime.vhost_defs.values(), members))
            cmd["replication_factor"] = replicas
        await self.submit(cmd)

    async def set_vhost_shards(self, name: str, shard_count: int) -> None:
        """Grow a live vhost to ``shard_count`` shards; the new shards' owners spread over
        the nodes, and new queues go to them as the queue locator decides."""
        d = self.runtime.vhost_defs.get(name)
        if d is None:
            raise ChannelError(errors.NOT_FOUND, f"no vhost '{name}'")
        check_shard_count(shard_count)
        current = shards.count(d)
        if shard_count < current:
            raise errors.precondition(f"vhost '{name}' has {current} shards: a vhost's "
                                      f"shards cannot be reduced")
        taken = tuple(str((self.runtime.units.get(u) or {}).get("owner"))
                      for u in shards.units_of(name, d))
        owners = self.placement.pick_owners(shard_count - current, taken=taken,
                                            running=await self.placement.running_members())
        await self.submit({"op": "set_vhost_shards", "name": name, "shards": shard_count,
                           "shard_placements": self.placement.shard_placements(
                               owners, d.get("replication_factor"))})

    def default_queue_type(self, vhost: str) -> str | None:
        """The type a queue declared without `x-queue-type` gets in this vhost."""
        return (self.runtime.vhost_defs.get(vhost) or {}).get("default_queue_type")

    async def set_vhost_limits(self, name: str, limits: dict) -> None:
        await self.submit({"op": "set_vhost_limits", "name": name, "limits": limits})

    async def delete_vhost(self, name: str) -> None:
        await self.submit({"op": "delete_vhost", "name": name})

    async def add_user(self, name: str, password_hash: str, tags: list,
                       hashing: str = "rabbit_password_hashing_sha256") -> None:
        await self.submit({"op": "add_user", "name": name, "password_hash": password_hash,
                           "hashing": hashing, "tags": tags})

    async def delete_user(self, name: str) -> None:
        await self.submit({"op": "delete_user", "name": name})

    async def change_password(self, name: str, password_hash: str,
                              hashing: str = "rabbit_password_hashing_sha256") -> None:
        await self.submit({"op": "change_password", "name": name,
                           "password_hash": password_hash, "hashing": hashing})

    async def set_user_tags(self, name: str, tags: list) -> None:
        await self.submit({"op": "set_user_tags", "name": name, "tags": tags})

    async def set_permissions(self, user: str, vhost: str, configure: str, write: str,
                              read: str) -> None:
        for kind, pattern in (("configure", configure), ("write", write), ("read", read)):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ChannelError(errors.PRECONDITION_FAILED,
                                   f"invalid {kind} regex '{pattern}': {e}") from None
        await self.submit({"op": "set_permissions", "user": user, "vhost": vhost,
                           "configure": configure, "write": write, "read": read})

    async def clear_permissions(self, user: str, vhost: str) -> None:
        await self.submit({"op": "clear_permissions", "user": user, "vhost": vhost})

    async def set_policy(self, vhost: str, name: str, pattern: str, definition: dict,
                         priority: int = 0, apply_to: str = "all") -> None:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ChannelError(errors.PRECONDITION_FAILED,
                               f"invalid policy pattern '{pattern}': {e}") from None
        await self.submit({"op": "set_policy", "vhost": vhost, "name": name,
                           "pattern": pattern, "definition": definition,
                           "priority": priority, "apply_to": apply_to})

    async def clear_policy(self, vhost: str, name: str) -> None:
        await self.submit({"op": "clear_policy", "vhost": vhost, "name": name})

    # ------------------------------------------------------------------------------
    # checks: redeclaration equivalence, queue arguments
    # ------------------------------------------------------------------------------
    @staticmethod
    def check_exchange_equivalent(ex: Exchange, type_name: str, durable: bool,
                                  auto_delete: bool, internal: bool, args: dict) -> None:
        what = f"for {resource_text('exchange', ex.name, ex.vhost)}"
        for field, current, received in (("type", ex.type_name, type_name),
                                         ("durable", ex.durable, durable),
                                         ("auto_delete", ex.auto_delete, auto_delete),
                                         ("internal", ex.internal, internal)):
            if current != received:
                raise errors.precondition(f"inequivalent arg '{field}' {what}: received "
                                          f"'{_fmt(received)}' but current is '{_fmt(current)}'")
        for key in EQUIVALENT_EXCHANGE_ARGS:
            if args.get(key) != ex.arguments.get(key):
                raise errors.precondition(
                    f"inequivalent arg '{key}' {what}: received '{_fmt(args.get(key))}' but "
                    f"current is '{_fmt(ex.arguments.get(key))}'")

    @staticmethod
    def check_queue_equivalent(q: Queue, durable: bool, exclusive: bool, auto_delete: bool,
                               args: dict) -> None:
        what = f"for {resource_text('queue', q.name, q.vhost)}"
        for field, current, received in (("durable", q.durable, durable),
                                         ("exclusive", q.exclusive_owner is not None, exclusive),
                                         ("auto_delete", q.auto_delete, auto_delete)):
            if current != received:
                raise errors.precondition(f"inequivalent arg '{field}' {what}: received "
                                          f"'{_fmt(received)}' but current is '{_fmt(current)}'")
        quorum = types.queue_type(q.arguments) == types.QUORUM
        for key in types.QUORUM_ARGS if quorum else EQUIVALENT_QUEUE_ARGS:
            a, b = args.get(key), q.arguments.get(key)
            if key == "x-queue-type":
                # RabbitMQ 4.0 writes the type into every declaration: none is classic
                a = types.declared_type(args) or types.CLASSIC
                b = types.declared_type(q.arguments) or types.CLASSIC
            if a != b and not (isinstance(a, bytes) and isinstance(b, str)
                               and a.decode("utf-8", "replace") == b):
                raise errors.precondition(f"inequivalent arg '{key}' {what}: received "
                                          f"'{_fmt(a)}' but current is '{_fmt(b)}'")

    @staticmethod
    def validate_queue_arguments(args: dict, name: str = "", vhost: str = "",
                                 durable: bool = True, exclusive: bool = False,
                                 auto_delete: bool = False) -> None:
        """A new queue's arguments and flags, in RabbitMQ's order: the queue type, the
        values of the arguments that type takes, arguments it does not take, its flags."""
        qtype = types.declared_type(args)
        if qtype is not None and qtype not in types.TYPES:
            types.check_declare(args, name, vhost, durable, exclusive, auto_delete)
        quorum = qtype == types.QUORUM

        def need_int(key: str, minimum: int) -> None:
            v = args.get(key)
            if v is None:
                return
            if isinstance(v, bool) or not isinstance(v, int):
                raise errors.precondition(f"invalid arg '{key}' for queue: expected an integer,"
                                          f" got {_fmt(v)!r}")
            if v < minimum:
                raise errors.precondition(f"invalid arg '{key}' for queue: {v} < {minimum}")
        need_int("x-message-ttl", 0)
        need_int("x-expires", 1)
        need_int("x-max-length", 0)
        need_int("x-max-length-bytes", 0)
        if not quorum:
            need_int("x-max-priority", 0)
            if isinstance(args.get("x-max-priority"), int) and args["x-max-priority"] > 255:
                raise errors.precondition("invalid arg 'x-max-priority': "
                                          f"{args['x-max-priority']} > 255")
        overflow = args.get("x-overflow")
        if isinstance(overflow, bytes):
            overflow = overflow.decode("utf-8", "replace")
        if overflow is not None and overflow not in OVERFLOW_MODES:
            raise errors.precondition(f"invalid arg 'x-overflow' for queue: '{overflow}' is not "
                                      f"one of {', '.join(OVERFLOW_MODES)}")
        for key in ("x-dead-letter-exchange", "x-dead-letter-routing-key"):
            v = args.get(key)
            if v is not None and not isinstance(v, (str, bytes)):
                raise errors.precondition(f"invalid arg '{key}' for queue: expected a string")
        for key, allowed in LOCATOR_VALUES.items():  # RabbitMQ 3.10's quorum-queue texts
            v = args.get(key)
            if v is None:
                continue
            if not isinstance(v, (str, bytes)):
                kind = "signedint" if isinstance(v, int) else type(v).__name__
                raise errors.precondition(f"invalid arg '{key}' for "
                                          f"{errors.resource_text('queue', name, vhost)}: "
                                          f"{{unacceptable_type,{kind}}}")
            if (v.decode("utf-8", "replace") if isinstance(v, bytes) else v) not in allowed:
                raise errors.precondition(f"invalid arg '{key}' for "
                                          f"{errors.resource_text('queue', name, vhost)}: "
                                          f"invalid_queue_locator_arg")
        if "x-dead-letter-routing-key" in args and "x-dead-letter-exchange" not in args:
            # RabbitMQ's text (a policy's dead-letter-exchange does not count)
            raise errors.precondition(f"invalid arg 'x-dead-letter-routing-key' for "
                                      f"{errors.resource_text('queue', name, vhost)}: "
                                      f"routing_key_but_no_dlx_defined")
        types.check_declare(args, name, vhost, durable, exclusive, auto_delete)
