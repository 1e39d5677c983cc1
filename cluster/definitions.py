"""The definitions state machine: vhosts, users, permissions, policies, durable exchanges,
durable queues, bindings and vhost placement, changed only by `DefinitionState.apply`.

Everything that affects the replicated definitions lives in this file, and this file does
no I/O and knows nothing of Raft, threads or asyncio (`cluster.raft` feeds it commands in
commit order).  Two rules keep every replica identical:

* `apply` is deterministic: its outcome depends only on the state and the command (no
  clock, no randomness, no iteration over sets, no regex engine), so replaying a journal
  rebuilds the same state on every node and every restart;
* `apply` never raises: a malformed or refused command is *committed* like any other, and
  an exception there would wedge pysyncobj's apply loop on that entry forever.  It returns
  ``{"ok": False, "code": <AMQP reply code>, "text": "..."}`` instead.

The state is plain data (dict, list, str, int, bool, bytes, None) so that it can be
msgpack-encoded for snapshots.  Commands and results are plain dicts too; a stored
definition handed out in a result or by a read helper is a copy, never the live object.

Shape of the state (and of `snapshot()`)::

    vhosts[name]             = {"name", "description", "tags", "default_queue_type",
                                "owner", "epoch", "replicas", "in_sync",
                                "replication_factor", "confirmed"?, "shards"?}
    shards[unit]             = {"name" (the unit key), "vhost", "shard", "owner", "epoch",
                                "replicas", "in_sync", "replication_factor", "confirmed"?}
    users[name]              = {"name", "password_hash", "hashing", "tags"}
    permissions[vhost][user] = {"user", "vhost", "configure", "write", "read"}
    policies[vhost][name]    = {"vhost", "name", "pattern", "definition", "priority",
                                "apply_to"}
    exchanges[vhost][name]   = {"vhost", "name", "type", "durable", "auto_delete",
                                "internal", "arguments"}
    queues[vhost][name]      = {"vhost", "name", "durable", "auto_delete", "exclusive",
                                "arguments", "id", "shard"?}
    bindings[vhost][key]     = {"vhost", "source", "destination", "destination_type",
                                "routing_key", "arguments"}   (key: see `binding_key`)

``arguments`` of exchanges, queues and bindings is an opaque ``bytes`` blob (the node's
AMQP-encoded field table); this module never decodes it and compares it byte for byte.
A vhost's placement record is its shard 0; shards 1.. of a vhost with ``shards`` > 1 have
records of their own under their unit keys (cluster/shards.py), and the placement
commands take either kind of key as ``name``.  A queue's ``shard`` says which unit holds
it.  A queue's ``id`` names its declaration (chosen by the submitter, "" in queues declared
before it existed): a queue deleted and declared again under the same name has another
one, so the owner never takes the old queue's stored messages for the new one's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import msgpack

from cluster import shards as sharding
from node.amqp.errors import resource_text
from node.amqp.spec import ACCESS_REFUSED, INTERNAL_ERROR, NOT_FOUND, PRECONDITION_FAILED
from node.amqp.standard_exchanges import STANDARD_EXCHANGES

__all__ = [
    "ACCESS_REFUSED",
    "DEFAULT_EXCHANGES",
    "EMPTY_ARGUMENTS",
    "INTERNAL_ERROR",
    "NOT_FOUND",
    "PRECONDITION_FAILED",
    "SNAPSHOT_FORMAT",
    "DefinitionState",
    "binding_key",
]

# AMQP 0-9-1 reply codes used in refusals come from the AMQP layer, as do the standard
# exchanges and the text that names a resource; INTERNAL_ERROR is a malformed command: a
# bug in the caller, not a user error.

SNAPSHOT_FORMAT = 1

# An empty AMQP field table as the node encodes it (32-bit length 0, the same bytes as
# node.amqp.fields.encode_table({})): the predeclared exchanges' arguments and the default
# when a command omits `arguments`.  Nothing here decodes it.
EMPTY_ARGUMENTS = b"\x00\x00\x00\x00"

# Created in every vhost (node/amqp/standard_exchanges.py). They are durable definitions,
# so bindings to them live here like any other.
DEFAULT_EXCHANGES = STANDARD_EXCHANGES

_MISSING = object()


class _Refused(Exception):
    """Raised inside a handler to turn into an ``{"ok": False, ...}`` result."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text

    def answer(self) -> dict[str, Any]:
        return {"ok": False, "code": self.code, "text": self.text}


_T = TypeVar("_T")


def _copy(value: _T) -> _T:
    """Deep copy of plain data (msgpack round trip: C speed, and proof of plainness)."""
    copied: _T = msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False)
    return copied


def binding_key(
    source: str, destination_type: str, destination: str, routing_key: str, arguments: bytes
) -> str:
    """The identity of a binding, as the key of ``bindings[vhost]``.

    JSON of the five fields: unambiguous whatever bytes the names contain, and readable.
    """
    return json.dumps([source, destination_type, destination, routing_key, arguments.hex()])




class _Command:
    """Typed access to a command's fields; a missing or mistyped field is refused."""

    def __init__(self, op: str, fields: dict[str, Any]) -> None:
        self.op = op
        self.fields = fields

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
        value = self.fields.get(name, _MISSING)
        if value is _MISSING or (value is None and default is not _MISSING):
            if default is _MISSING:
                raise _Refused(
                    INTERNAL_ERROR, f"definition command '{self.op}' lacks field '{name}'"
                )
            return default() if callable(default) else default
        # bool is an int subclass: never accept True where a number is expected.
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
            raise _Refused(
                INTERNAL_ERROR,
                f"definition command '{self.op}': field '{name}' must be "
                f"{_kind_names(kind)}, got {type(value).__name__}",
            )
        return value

    def str_list(self, name: str) -> list[str]:
        value = self.get(name, list, list)
        if not all(isinstance(item, str) for item in value):
            raise _Refused(
                INTERNAL_ERROR,
                f"definition command '{self.op}': field '{name}' must be a list of str",
            )
        return list(value)


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_names(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in _kinds(kind))


def _kept(cmd: "_Command") -> frozenset[str]:
    """Auto-delete exchanges the submitter still sees transient bindings on (optional)."""
    return frozenset(cmd.str_list("keep_exchanges"))


def _ok(**fields: Any) -> dict[str, Any]:
    return {"ok": True, **fields}


class DefinitionState:
    """The replicated definitions.  See the module docstring for the shape and the rules."""

    def __init__(self) -> None:
        self.bootstrapped: bool = False
        self.vhosts: dict[str, dict[str, Any]] = {}
        # placement records of shards 1.. of sharded vhosts, by unit key
        self.shards: dict[str, dict[str, Any]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.permissions: dict[str, dict[str, dict[str, Any]]] = {}
        self.policies: dict[str, dict[str, dict[str, Any]]] = {}
        self.exchanges: dict[str, dict[str, dict[str, Any]]] = {}
        self.queues: dict[str, dict[str, dict[str, Any]]] = {}
        self.bindings: dict[str, dict[str, dict[str, Any]]] = {}
        # cluster members by node name: {"name", "raft", "forward", "amqp", "http"}
        self.nodes: dict[str, dict[str, Any]] = {}
        # the cluster's identity (cluster/membership.py): set by the first bootstrap
        self.cluster_id: str = ""

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> dict[str, Any]:
        """A deep, plain, msgpack-able copy of the whole state."""
        return _copy(self._tables())

    def dumps(self) -> bytes:
        """`snapshot()` as msgpack bytes, without the intermediate copy."""
        return msgpack.packb(self._tables(), use_bin_type=True)

    def _tables(self) -> dict[str, Any]:
        return {
            "format": SNAPSHOT_FORMAT,
            "bootstrapped": self.bootstrapped,
            "vhosts": self.vhosts,
            "shards": self.shards,
            "users": self.users,
            "permissions": self.permissions,
            "policies": self.policies,
            "exchanges": self.exchanges,
            "queues": self.queues,
            "bindings": self.bindings,
            "nodes": self.nodes,
            "cluster_id": self.cluster_id,
        }

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> DefinitionState:
        """Rebuild a state from `snapshot()` output (which it copies, never aliases)."""
        return cls._adopt(_copy(data))

    @classmethod
    def loads(cls, blob: bytes) -> DefinitionState:
        """Rebuild a state from `dumps()` output."""
        return cls._adopt(msgpack.unpackb(blob, raw=False))

    @classmethod
    def _adopt(cls, data: Any) -> DefinitionState:
        if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"unsupported definitions snapshot format {found!r}")
        state = cls()
        state.bootstrapped = bool(data["bootstrapped"])
        state.vhosts = data["vhosts"]
        state.shards = data.get("shards", {})
        state.users = data["users"]
        state.permissions = data["permissions"]
        state.policies = data["policies"]
        state.exchanges = data["exchanges"]
        state.queues = data["queues"]
        state.bindings = data["bindings"]
        state.nodes = data.get("nodes", {})
        state.cluster_id = str(data.get("cluster_id", ""))
        return state

    # ------------------------------------------------------------------ read helpers
    # All return copies; a missing vhost/user reads as None or empty.

    def vhost(self, name: str) -> dict[str, Any] | None:
        found = self.vhosts.get(name)
        return _copy(found) if found is not None else None

    def list_vhosts(self) -> list[dict[str, Any]]:
        return _copy(list(self.vhosts.values()))

    def user(self, name: str) -> dict[str, Any] | None:
        found = self.users.get(name)
        return _copy(found) if found is not None else None

    def list_users(self) -> list[dict[str, Any]]:
        return _copy(list(self.users.values()))

    def permission(self, user: str, vhost: str) -> dict[str, Any] | None:
        found = self.permissions.get(vhost, {}).get(user)
        return _copy(found) if found is not None else None

    def list_permissions(
        self, *, vhost: str | None = None, user: str | None = None
    ) -> list[dict[str, Any]]:
        return _copy(
            [
                perm
                for vhost_name, perms in self.permissions.items()
                if vhost is None or vhost_name == vhost
                for perm in perms.values()
                if user is None or perm["user"] == user
            ]
        )

    def policy(self, vhost: str, name: str) -> dict[str, Any] | None:
        found = self.policies.get(vhost, {}).get(name)
        return _copy(found) if found is not None else None

    def list_policies(self, vhost: str | None = None) -> list[dict[str, Any]]:
        return _copy(self._across(self.policies, vhost))

    def exchange(self, vhost: str, name: str) -> dict[str, Any] | None:
        found = self.exchanges.get(vhost, {}).get(name)
        return _copy(found) if found is not None else None

    def list_exchanges(self, vhost: str | None = None) -> list[dict[str, Any]]:
        return _copy(self._across(self.exchanges, vhost))

    def queue(self, vhost: str, name: str) -> dict[str, Any] | None:
        found = self.queues.get(vhost, {}).get(name)
        return _copy(found) if found is not None else None

    def list_queues(self, vhost: str | None = None) -> list[dict[str, Any]]:
        return _copy(self._across(self.queues, vhost))

    def list_bindings(self, vhost: str | None = None) -> list[dict[str, Any]]:
        return _copy(self._across(self.bindings, vhost))

    @staticmethod
    def _across(
        table: dict[str, dict[str, dict[str, Any]]], vhost: str | None
    ) -> list[dict[str, Any]]:
        if vhost is not None:
            return list(table.get(vhost, {}).values())
        return [item for per_vhost in table.values() for item in per_vhost.values()]

    # ------------------------------------------------------------------ apply

    def apply(self, command: Any) -> dict[str, Any]:
        """Apply one committed command; never raises (see the module docstring)."""
        try:
            if not isinstance(command, dict):
                raise _Refused(
                    INTERNAL_ERROR,
                    f"definition command must be a map, got {type(command).__name__}",
                )
            op = command.get("op")
            if not isinstance(op, str) or op not in _HANDLERS:
                raise _Refused(INTERNAL_ERROR, f"unknown definition command {op!r}")
            return _HANDLERS[op](self, _Command(op, command))
        except _Refused as refused:
            return refused.answer()
        except Exception as exc:  # a bug here must not wedge the replicated log
            return {
                "ok": False,
                "code": INTERNAL_ERROR,
                "text": f"definition command failed: {type(exc).__name__}: {exc}",
            }

    # ------------------------------------------------------------------ lookups

    def _need_vhost(self, name: str) -> dict[str, Any]:
        found = self.vhosts.get(name)
        if found is None:
            raise _Refused(NOT_FOUND, f"no vhost '{name}'")
        return found

    def _need_unit(self, name: str) -> dict[str, Any]:
        """The placement record of a unit: a vhost (its shard 0) or one of its shards."""
        found = self.vhosts.get(name) or self.shards.get(name)
        if found is None:
            raise _Refused(NOT_FOUND, f"no {sharding.label(name)}")
        return found

    def _need_user(self, name: str) -> dict[str, Any]:
        found = self.users.get(name)
        if found is None:
            raise _Refused(NOT_FOUND, f"no user '{name}'")
        return found

    def _need_exchange(self, vhost: str, name: str) -> dict[str, Any]:
        found = self.exchanges.get(vhost, {}).get(name)
        if found is None:
            raise _Refused(NOT_FOUND, f"no {resource_text('exchange', name, vhost)}")
        return found

    def _need_queue(self, vhost: str, name: str) -> dict[str, Any]:
        found = self.queues.get(vhost, {}).get(name)
        if found is None:
            raise _Refused(NOT_FOUND, f"no {resource_text('queue', name, vhost)}")
        return found

    # ------------------------------------------------------------------ vhosts

    def _create_vhost(
        self,
        name: str,
        description: str = "",
        tags: list[str] | None = None,
        default_queue_type: str = "classic",
        owner: str | None = None,
        replicas: list[str] | None = None,
        replication_factor: int | None = None,
        shard_placements: list[tuple[str, list[str]]] | None = None,
    ) -> None:
        self.vhosts[name] = {
            "name": name,
            "description": description,
            "tags": list(tags or []),
            "default_queue_type": default_queue_type,
            "owner": owner,
            # Counts ownership assignments; data-path fencing compares it.
            "epoch": 0 if owner is None else 1,
            # Nodes that hold a copy of the vhost's store besides the owner, and those of
            # them whose copy is known complete: only they may be promoted, and the owner
            # confirms a persistent message only once each of them has it.
            "replicas": [r for r in replicas or [] if r != owner],
            "in_sync": [],
            # Copies wanted, the owner's included (None: the cluster's default).
            "replication_factor": replication_factor,
        }
        if shard_placements:
            self._add_shards(name, shard_placements)
        self.permissions[name] = {}
        self.policies[name] = {}
        self.queues[name] = {}
        self.bindings[name] = {}
        self.exchanges[name] = {
            xname: {
                "vhost": name,
                "name": xname,
                "type": xtype,
                "durable": True,
                "auto_delete": False,
                "internal": internal,
                "arguments": EMPTY_ARGUMENTS,
            }
            for xname, (xtype, internal) in DEFAULT_EXCHANGES.items()
        }

    def _add_shards(self, name: str, placements: list[tuple[str, list[str]]]) -> list[str]:
        """Shards after the vhost's current ones, one per (owner, replicas)."""
        vhost = self.vhosts[name]
        first = sharding.count(vhost)
        if first + len(placements) > sharding.MAX_SHARDS:
            raise _Refused(PRECONDITION_FAILED, f"vhost '{name}' cannot have more than "
                                                f"{sharding.MAX_SHARDS} shards")
        added = []
        for k, (owner, replicas) in enumerate(placements, start=first):
            unit = sharding.unit_key(name, k)
            self.shards[unit] = {
                "name": unit, "vhost": name, "shard": k, "owner": owner, "epoch": 1,
                "replicas": [r for r in replicas if r != owner], "in_sync": [],
                "replication_factor": vhost.get("replication_factor"),
            }
            added.append(unit)
        vhost["shards"] = first + len(placements)
        return added

    def _shard_placements(self, cmd: _Command) -> list[tuple[str, list[str]]]:
        raw = cmd.get("shard_placements", list, [])
        out = []
        for item in raw:
            if not (isinstance(item, (list, tuple)) and len(item) == 2
                    and isinstance(item[0], str) and isinstance(item[1], (list, tuple))
                    and all(isinstance(r, str) for r in item[1])):
                raise _Refused(INTERNAL_ERROR, "shard_placements must be [owner, [replicas]] "
                                               "pairs")
            out.append((item[0], list(item[1])))
        return out

    def _op_set_vhost_shards(self, cmd: _Command) -> dict[str, Any]:
        """Grow a vhost to ``shards`` shards; the new ones are placed as the submitter chose
        (``shard_placements``, one [owner, replicas] pair per new shard).  A vhost never
        shrinks: a shard's queues would have to move first."""
        name = cmd.get("name", str)
        wanted = cmd.get("shards", int)
        vhost = self._need_vhost(name)
        current = sharding.count(vhost)
        if wanted < current:
            raise _Refused(PRECONDITION_FAILED, f"vhost '{name}' has {current} shards: a "
                                                f"vhost's shards cannot be reduced")
        placements = self._shard_placements(cmd)
        if len(placements) != wanted - current:
            raise _Refused(INTERNAL_ERROR, f"set_vhost_shards needs {wanted - current} "
                                           f"placements, got {len(placements)}")
        added = self._add_shards(name, placements) if placements else []
        return _ok(vhost=_copy(vhost), shards=[_copy(self.shards[u]) for u in added])

    def _op_add_vhost(self, cmd: _Command) -> dict[str, Any]:
        """Create a vhost, or update the metadata of an existing one (HTTP PUT semantics).

        Owner and epoch of an existing vhost change only through `set_vhost_owner`.
        """
        name = cmd.get("name", str)
        description = cmd.get("description", str, "")
        tags = cmd.str_list("tags")
        default_queue_type = cmd.get("default_queue_type", str, "classic")
        owner = cmd.get("owner", str, None)
        replicas = cmd.str_list("replicas")
        factor = cmd.get("replication_factor", int, None)
        existing = self.vhosts.get(name)
        if existing is None:
            placements = self._shard_placements(cmd)
            self._create_vhost(name, description, tags, default_queue_type, owner, replicas,
                               factor, placements)
            return _ok(created=True, vhost=_copy(self.vhosts[name]),
                       shards=[_copy(self.shards[sharding.unit_key(name, k)])
                               for k in range(1, sharding.count(self.vhosts[name]))])
        existing.update(description=description, tags=tags, default_queue_type=default_queue_type)
        return _ok(created=False, vhost=_copy(existing))

    def _op_delete_vhost(self, cmd: _Command) -> dict[str, Any]:
        name = cmd.get("name", str)
        vhost = self._need_vhost(name)
        del self.vhosts[name]
        units = sharding.units_of(name, vhost)[1:]
        for unit in units:
            self.shards.pop(unit, None)
        exchanges = list(self.exchanges.pop(name, {}))
        queues = list(self.queues.pop(name, {}))
        self.bindings.pop(name, None)
        self.permissions.pop(name, None)
        self.policies.pop(name, None)
        return _ok(deleted=True, exchanges=exchanges, queues=queues, shards=units)

    # ------------------------------------------------------------------ nodes

    def _op_register_node(self, cmd: _Command) -> dict[str, Any]:
        """A node announces (or updates) the addresses other nodes and clients reach it at."""
        name = cmd.get("name", str)
        node = {"name": name}
        for key in ("raft", "forward", "amqp", "http"):
            node[key] = cmd.get(key, str, "")
        created = name not in self.nodes
        self.nodes[name] = node
        return _ok(created=created, node=_copy(node))

    def _op_forget_node(self, cmd: _Command) -> dict[str, Any]:
        name = cmd.get("name", str)
        if self.nodes.pop(name, None) is None:
            raise _Refused(NOT_FOUND, f"no node '{name}' in the cluster")
        changed = []
        for vname, vhost in [*self.vhosts.items(), *self.shards.items()]:
            if name in vhost.get("replicas", []):
                vhost["replicas"] = [r for r in vhost["replicas"] if r != name]
                vhost["in_sync"] = [r for r in vhost.get("in_sync", []) if r != name]
                changed.append(vname)
        return _ok(deleted=True, vhosts=changed)

    def _op_set_vhost_limits(self, cmd: _Command) -> dict[str, Any]:
        """Replace a vhost's limits ({"max-connections": n, "max-queues": n}; a negative
        value means no limit, as in RabbitMQ)."""
        name = cmd.get("name", str)
        limits = cmd.get("limits", dict)
        vhost = self._need_vhost(name)
        clean: dict[str, int] = {}
        for key, value in limits.items():
            if key not in ("max-connections", "max-queues") or isinstance(value, bool) \
                    or not isinstance(value, int):
                raise _Refused(PRECONDITION_FAILED, f"invalid vhost limit '{key}': {value!r}")
            if value >= 0:
                clean[key] = value
        vhost["limits"] = clean
        return _ok(vhost=_copy(vhost))

    def _expect_epoch(self, name: str, cmd: _Command) -> dict[str, Any]:
        """The vhost, if ``expected_epoch`` (when given) is still its epoch: placement
        changes are compare-and-set, so a deposed owner's late request, or two nodes racing
        to take over after a failure, cannot both win."""
        vhost = self._need_unit(name)
        expected = cmd.get("expected_epoch", int, None)
        if expected is not None and expected != vhost["epoch"]:
            raise _Refused(
                PRECONDITION_FAILED,
                f"{sharding.label(name)} is at epoch {vhost['epoch']}, expected {expected}",
            )
        return vhost

    def _op_set_vhost_owner(self, cmd: _Command) -> dict[str, Any]:
        """Assign the vhost to a node (a move, or a failover's promotion); every assignment
        bumps the epoch.

        With ``require_in_sync`` the new owner must be an in-sync replica (failover never
        promotes a copy that may lack confirmed messages).  The old owner stays a replica;
        with ``old_owner_in_sync`` (a move that drained every record to the new owner
        first) it also stays in sync.
        """
        name = cmd.get("name", str)
        owner = cmd.get("owner", str, None)
        require_in_sync = cmd.get("require_in_sync", bool, False)
        old_in_sync = cmd.get("old_owner_in_sync", bool, False)
        vhost = self._expect_epoch(name, cmd)
        in_sync = list(vhost.get("in_sync", []))
        replicas = list(vhost.get("replicas", []))
        if require_in_sync and owner not in in_sync:
            raise _Refused(
                PRECONDITION_FAILED,
                f"node '{owner}' is not an in-sync replica of {sharding.label(name)}",
            )
        old = vhost["owner"]
        if old is not None and old != owner:
            if old not in replicas:
                replicas.append(old)
            if old_in_sync and old not in in_sync:
                in_sync.append(old)
        vhost["owner"] = owner
        vhost.pop("moving_to", None)
        vhost["replicas"] = [r for r in replicas if r != owner]
        vhost["in_sync"] = [r for r in in_sync if r != owner]
        vhost["epoch"] += 1
        # a failover's promoted copy went furthest: no later promotion may go below it (a
        # copy still in sync may lack the newest confirms until it has caught up with it)
        confirmed = cmd.get("confirmed", int, 0)
        if confirmed > int(vhost.get("confirmed", 0) or 0):
            vhost["confirmed"] = confirmed
        return _ok(vhost=_copy(vhost), epoch=vhost["epoch"], previous_owner=old)

    def _op_set_vhost_replicas(self, cmd: _Command) -> dict[str, Any]:
        """Choose which nodes hold copies (and, optionally, how many copies are wanted);
        a replica that is dropped leaves the in-sync set with it."""
        name = cmd.get("name", str)
        replicas = cmd.str_list("replicas")
        vhost = self._expect_epoch(name, cmd)
        vhost["replicas"] = [r for r in dict.fromkeys(replicas) if r != vhost["owner"]]
        vhost["in_sync"] = [r for r in vhost.get("in_sync", []) if r in vhost["replicas"]]
        if "moving_to" in cmd.fields:
            # a move's target: repairs never trim it while it catches up
            vhost["moving_to"] = cmd.get("moving_to", str, None)
        if "replication_factor" in cmd.fields:
            vhost["replication_factor"] = cmd.get("replication_factor", int, None)
        return _ok(vhost=_copy(vhost))

    def _op_set_in_sync(self, cmd: _Command) -> dict[str, Any]:
        """The owner adds a caught-up replica to the in-sync set, or drops one that fell
        behind; only the owner of ``expected_epoch`` may (fencing)."""
        name = cmd.get("name", str)
        node = cmd.get("node", str)
        in_sync = cmd.get("in_sync", bool)
        vhost = self._expect_epoch(name, cmd)
        if "expected_epoch" not in cmd.fields:
            raise _Refused(INTERNAL_ERROR, "set_in_sync needs expected_epoch")
        current = list(vhost.get("in_sync", []))
        if in_sync:
            if node not in vhost.get("replicas", []):
                raise _Refused(NOT_FOUND,
                               f"node '{node}' is not a replica of {sharding.label(name)}")
            if node not in current:
                current.append(node)
        else:
            current = [r for r in current if r != node]
            # what the owner had confirmed when the copy left: every copy still in sync
            # holds it, so no promotion may go below it
            confirmed = cmd.get("confirmed", int, 0)
            if confirmed > int(vhost.get("confirmed", 0) or 0):
                vhost["confirmed"] = confirmed
        vhost["in_sync"] = current
        return _ok(vhost=_copy(vhost))

    def _op_set_in_sync_many(self, cmd: _Command) -> dict[str, Any]:
        """Several `set_in_sync` changes in one entry, each fenced and answered on its own:
        the units a node owns all drop a replica that died in one Raft round trip, not one
        each (their confirms wait for it)."""
        results = []
        for change in cmd.get("changes", list):
            if not isinstance(change, dict):
                results.append({"ok": False, "code": INTERNAL_ERROR,
                                "text": "set_in_sync_many: a change must be a map"})
                continue
            try:
                results.append(self._op_set_in_sync(_Command("set_in_sync", change)))
            except _Refused as refused:
                results.append(refused.answer())
        return _ok(results=results)

    # ------------------------------------------------------------------ users

    def _op_bootstrap(self, cmd: _Command) -> dict[str, Any]:
        """First-start defaults (vhost, user, full permissions); applies once ever."""
        vhost = cmd.get("vhost", str)
        user = cmd.get("user", str)
        password_hash = cmd.get("password_hash", (str, bytes))
        hashing = cmd.get("hashing", str)
        tags = cmd.str_list("tags")
        owner = cmd.get("owner", str, None)
        cluster_id = cmd.get("cluster_id", str, "")
        if cluster_id and not self.cluster_id:  # the first one committed names the cluster
            self.cluster_id = cluster_id
        if self.bootstrapped:
            return _ok(applied=False)
        self.bootstrapped = True
        if vhost not in self.vhosts:
            self._create_vhost(vhost, "Default virtual host", owner=owner)
        if user not in self.users:
            self.users[user] = {
                "name": user,
                "password_hash": password_hash,
                "hashing": hashing,
                "tags": tags,
            }
        self.permissions[vhost][user] = {
            "user": user,
            "vhost": vhost,
            "configure": ".*",
            "write": ".*",
            "read": ".*",
        }
        return _ok(applied=True)

    def _op_fork_cluster(self, cmd: _Command) -> dict[str, Any]:
        """A node running alone on a cluster's definitions names its log a cluster of its
        own (cluster/membership.py): the cluster it left then refuses its Raft messages."""
        old, self.cluster_id = self.cluster_id, cmd.get("cluster_id", str)
        return _ok(forked_from=old)

    def _op_add_user(self, cmd: _Command) -> dict[str, Any]:
        """Create a user, or replace the password and tags of an existing one."""
        name = cmd.get("name", str)
        password_hash = cmd.get("password_hash", (str, bytes))
        hashing = cmd.get("hashing", str)
        tags = cmd.str_list("tags")
        created = name not in self.users
        self.users[name] = {
            "name": name,
            "password_hash": password_hash,
            "hashing": hashing,
            "tags": tags,
        }
        return _ok(created=created)

    def _op_delete_user(self, cmd: _Command) -> dict[str, Any]:
        name = cmd.get("name", str)
        self._need_user(name)
        del self.users[name]
        for perms in self.permissions.values():
            perms.pop(name, None)
        return _ok(deleted=True)

    def _op_change_password(self, cmd: _Command) -> dict[str, Any]:
        name = cmd.get("name", str)
        password_hash = cmd.get("password_hash", (str, bytes))
        hashing = cmd.get("hashing", str)
        user = self._need_user(name)
        user["password_hash"] = password_hash
        user["hashing"] = hashing
        return _ok()

    def _op_set_user_tags(self, cmd: _Command) -> dict[str, Any]:
        name = cmd.get("name", str)
        tags = cmd.str_list("tags")
        self._need_user(name)["tags"] = tags
        return _ok()

    def _op_set_permissions(self, cmd: _Command) -> dict[str, Any]:
        # The patterns are regexes, but they are checked by the node before submitting:
        # whether a pattern compiles may differ between Python versions, and the state
        # must not depend on which version a replica runs.
        user = cmd.get("user", str)
        vhost = cmd.get("vhost", str)
        configure = cmd.get("configure", str)
        write = cmd.get("write", str)
        read = cmd.get("read", str)
        self._need_user(user)
        self._need_vhost(vhost)
        created = user not in self.permissions[vhost]
        self.permissions[vhost][user] = {
            "user": user,
            "vhost": vhost,
            "configure": configure,
            "write": write,
            "read": read,
        }
        return _ok(created=created)

    def _op_clear_permissions(self, cmd: _Command) -> dict[str, Any]:
        user = cmd.get("user", str)
        vhost = cmd.get("vhost", str)
        deleted = self.permissions.get(vhost, {}).pop(user, None) is not None
        return _ok(deleted=deleted)

    # ------------------------------------------------------------------ policies

    def _op_set_policy(self, cmd: _Command) -> dict[str, Any]:
        vhost = cmd.get("vhost", str)
        name = cmd.get("name", str)
        pattern = cmd.get("pattern", str)
        definition = cmd.get("definition", dict)
        priority = cmd.get("priority", int, 0)
        apply_to = cmd.get("apply_to", str, "all")
        self._need_vhost(vhost)
        created = name not in self.policies[vhost]
        self.policies[vhost][name] = policy = {
            "vhost": vhost,
            "name": name,
            "pattern": pattern,
            "definition": _copy(definition),
            "priority": priority,
            "apply_to": apply_to,
        }
        return _ok(created=created, policy=_copy(policy))

    def _op_clear_policy(self, cmd: _Command) -> dict[str, Any]:
        vhost = cmd.get("vhost", str)
        name = cmd.get("name", str)
        deleted = self.policies.get(vhost, {}).pop(name, None) is not None
        return _ok(deleted=deleted)

    # ------------------------------------------------------------------ exchanges

    def _op_declare_exchange(self, cmd: _Command) -> dict[str, Any]:
        """Create if absent; an existing exchange is returned unchanged, and the node
        compares it with what the client asked for (406 inequivalent arg)."""
        vhost = cmd.get("vhost", str)
        name = cmd.get("name", str)
        xtype = cmd.get("type", str)
        durable = cmd.get("durable", bool)
        auto_delete = cmd.get("auto_delete", bool, False)
        internal = cmd.get("internal", bool, False)
        arguments = cmd.get("arguments", bytes, EMPTY_ARGUMENTS)
        self._need_vhost(vhost)
        existing = self.exchanges[vhost].get(name)
        if existing is not None:
            return _ok(created=False, exchange=_copy(existing))
        if name == "" or name.startswith("amq."):
            raise _Refused(
                ACCESS_REFUSED, f"exchange name '{name}' contains reserved prefix 'amq.*'"
            )
        self.exchanges[vhost][name] = exchange = {
            "vhost": vhost,
            "name": name,
            "type": xtype,
            "durable": durable,
            "auto_delete": auto_delete,
            "internal": internal,
            "arguments": arguments,
        }
        return _ok(created=True, exchange=_copy(exchange))

    def _op_delete_exchange(self, cmd: _Command) -> dict[str, Any]:
        vhost = cmd.get("vhost", str)
        name = cmd.get("name", str)
        if_unused = cmd.get("if_unused", bool, False)
        if name == "":
            raise _Refused(ACCESS_REFUSED, "operation not permitted on the default exchange")
        if name in DEFAULT_EXCHANGES:
            raise _Refused(
                ACCESS_REFUSED,
                f"deletion of system {resource_text('exchange', name, vhost)} not allowed",
            )
        if name not in self.exchanges.get(vhost, {}):
            return _ok(deleted=False, bindings=[], auto_deleted_exchanges=[])
        if if_unused and any(b["source"] == name for b in self.bindings[vhost].values()):
            raise _Refused(PRECONDITION_FAILED, f"{resource_text('exchange', name, vhost)} in use")
        removed: list[dict[str, Any]] = []
        auto_deleted: list[str] = []
        self._remove_exchange(vhost, name, removed, auto_deleted, _kept(cmd))
        return _ok(deleted=True, bindings=removed, auto_deleted_exchanges=auto_deleted)

    def _remove_exchange(
        self, vhost: str, name: str, removed: list[dict[str, Any]], auto_deleted: list[str],
        kept: frozenset[str] = frozenset(),
    ) -> None:
        del self.exchanges[vhost][name]
        self._remove_bindings(
            vhost,
            lambda b: (
                b["source"] == name
                or (b["destination_type"] == "exchange" and b["destination"] == name)
            ),
            removed,
            auto_deleted,
            kept,
        )

    def _remove_bindings(
        self,
        vhost: str,
        doomed: Callable[[dict[str, Any]], bool],
        removed: list[dict[str, Any]],
        auto_deleted: list[str],
        kept: frozenset[str] = frozenset(),
    ) -> None:
        """Drop the matching bindings, then any auto-delete exchange that lost its last
        binding as a source (RabbitMQ deletes those, cascading, in the same operation),
        except those in `kept`: the owner still has bindings of theirs that never went
        through Raft (to transient or exclusive queues)."""
        table = self.bindings[vhost]
        keys = [key for key, binding in table.items() if doomed(binding)]
        sources: list[str] = []
        for key in keys:
            binding = table.pop(key)
            removed.append(binding)
            if binding["source"] not in sources:
                sources.append(binding["source"])
        for source in sources:
            exchange = self.exchanges[vhost].get(source)
            if (
                exchange is not None
                and exchange["auto_delete"]
                and source not in kept
                and not any(b["source"] == source for b in table.values())
            ):
                auto_deleted.append(source)
                self._remove_exchange(vhost, source, removed, auto_deleted, kept)

    # ------------------------------------------------------------------ queues

    def _op_declare_queue(self, cmd: _Command) -> dict[str, Any]:
        vhost = cmd.get("vhost", str)
        name = cmd.get("name", str)
        durable = cmd.get("durable", bool)
        auto_delete = cmd.get("auto_delete", bool, False)
        exclusive = cmd.get("exclusive", bool, False)
        arguments = cmd.get("arguments", bytes, EMPTY_ARGUMENTS)
        declaration = cmd.get("id", str, "")
        shard = cmd.get("shard", int, 0)
        record = self._need_vhost(vhost)
        if exclusive and sharding.count(record) == 1:
            # an exclusive queue lives only on its vhost's owner, never in Raft, unless the
            # vhost is sharded: then any node may route to it, so every node must know it
            raise _Refused(
                INTERNAL_ERROR,
                f"exclusive {resource_text('queue', name, vhost)} cannot be replicated",
            )
        if not 0 <= shard < sharding.count(record):
            raise _Refused(PRECONDITION_FAILED, f"vhost '{vhost}' has no shard {shard}")
        existing = self.queues[vhost].get(name)
        if existing is not None:
            return _ok(created=False, queue=_copy(existing))
        self.queues[vhost][name] = queue = {
            "vhost": vhost,
            "name": name,
            "durable": durable,
            "auto_delete": auto_delete,
            "exclusive": exclusive,
            "arguments": arguments,
            "id": declaration,
        }
        if shard:
            queue["shard"] = shard
        if exclusive:  # the node of its connection: when that node restarts, it goes
            queue["exclusive_node"] = cmd.get("exclusive_node", str, "")
        return _ok(created=True, queue=_copy(queue))

    def _op_delete_queue(self, cmd: _Command) -> dict[str, Any]:
        vhost = cmd.get("vhost", str)
        name = cmd.get("name", str)
        if name not in self.queues.get(vhost, {}):
            return _ok(deleted=False, bindings=[], auto_deleted_exchanges=[])
        del self.queues[vhost][name]
        removed: list[dict[str, Any]] = []
        auto_deleted: list[str] = []
        self._remove_bindings(
            vhost,
            lambda b: b["destination_type"] == "queue" and b["destination"] == name,
            removed,
            auto_deleted,
            _kept(cmd),
        )
        return _ok(deleted=True, bindings=removed, auto_deleted_exchanges=auto_deleted)

    # ------------------------------------------------------------------ bindings

    def _binding_fields(self, cmd: _Command) -> tuple[str, str, str, str, str, bytes]:
        vhost = cmd.get("vhost", str)
        source = cmd.get("source", str)
        destination = cmd.get("destination", str)
        destination_type = cmd.get("destination_type", str)
        routing_key = cmd.get("routing_key", str, "")
        arguments = cmd.get("arguments", bytes, EMPTY_ARGUMENTS)
        if destination_type not in ("queue", "exchange"):
            raise _Refused(
                INTERNAL_ERROR,
                f"definition command '{cmd.op}': destination_type must be "
                f"'queue' or 'exchange', got {destination_type!r}",
            )
        if source == "" or (destination_type == "exchange" and destination == ""):
            raise _Refused(ACCESS_REFUSED, "operation not permitted on the default exchange")
        return vhost, source, destination, destination_type, routing_key, arguments

    def _op_bind(self, cmd: _Command) -> dict[str, Any]:
        vhost, source, destination, dtype, routing_key, arguments = self._binding_fields(cmd)
        self._need_vhost(vhost)
        self._need_exchange(vhost, source)
        if dtype == "queue":
            self._need_queue(vhost, destination)
        else:
            self._need_exchange(vhost, destination)
        key = binding_key(source, dtype, destination, routing_key, arguments)
        existing = self.bindings[vhost].get(key)
        if existing is not None:
            return _ok(created=False, binding=_copy(existing))
        self.bindings[vhost][key] = binding = {
            "vhost": vhost,
            "source": source,
            "destination": destination,
            "destination_type": dtype,
            "routing_key": routing_key,
            "arguments": arguments,
        }
        return _ok(created=True, binding=_copy(binding))

    def _op_unbind(self, cmd: _Command) -> dict[str, Any]:
        vhost, source, destination, dtype, routing_key, arguments = self._binding_fields(cmd)
        key = binding_key(source, dtype, destination, routing_key, arguments)
        if key not in self.bindings.get(vhost, {}):
            return _ok(deleted=False, bindings=[], auto_deleted_exchanges=[])
        target = self.bindings[vhost][key]
        removed: list[dict[str, Any]] = []
        auto_deleted: list[str] = []
        self._remove_bindings(vhost, lambda b: b is target, removed, auto_deleted, _kept(cmd))
        return _ok(deleted=True, bindings=removed, auto_deleted_exchanges=auto_deleted)

    # ------------------------------------------------------------------ internal

    def _op_barrier(self, cmd: _Command) -> dict[str, Any]:
        """No change: committed by `cluster.raft` to learn that every earlier entry is
        applied locally (a Raft read barrier)."""
        return _ok()


_HANDLERS: dict[str, Callable[[DefinitionState, _Command], dict[str, Any]]] = {
    name[len("_op_") :]: handler
    for name, handler in vars(DefinitionState).items()
    if name.startswith("_op_")
}
