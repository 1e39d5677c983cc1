"""Typed read models of the replicated records the runtime mirrors (vhosts, members,
users, permissions, policies), and `Records`, the read-only view of them that the
management plane uses instead of the mirror's dicts.

The mirror (node/runtime/mirror.py) keeps the records as the plain dicts Raft committed
(cluster/definitions.py gives their shape); here, and only here, they become frozen
dataclasses.  A record is built when it is read: building one is a handful of attribute
copies, cheaper than the JSON it turns into, so nothing needs invalidating when Raft
commits a change, and nothing on the message path pays for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from node import policies as policy_rules


def _strs(value: Any) -> tuple[str, ...]:
    return tuple(value or ())


@dataclass(frozen=True)
class VhostRecord:
    """A vhost's definition and placement: who serves it (`owner`, fenced by `epoch`),
    which nodes hold copies (`replicas`) and which of those are complete (`in_sync`)."""

    name: str
    description: str = ""
    tags: tuple[str, ...] = ()
    default_queue_type: str = "classic"
    owner: str | None = None
    epoch: int = 0
    replicas: tuple[str, ...] = ()
    in_sync: tuple[str, ...] = ()
    replication_factor: int | None = None  # copies wanted, the owner's included
    limits: Mapping[str, int] = field(default_factory=dict)
    confirmed: int = 0  # no promotion below: the confirms when a copy left in_sync, a failover's end
    shards: int = 1  # the vhost's own placement above is its shard 0 (cluster/shards.py)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VhostRecord:
        return cls(name=d["name"], description=d.get("description", ""),
                   tags=_strs(d.get("tags")),
                   default_queue_type=d.get("default_queue_type", "classic"),
                   owner=d.get("owner"), epoch=int(d.get("epoch") or 0),
                   replicas=_strs(d.get("replicas")), in_sync=_strs(d.get("in_sync")),
                   replication_factor=d.get("replication_factor"),
                   limits=dict(d.get("limits") or {}),
                   confirmed=int(d.get("confirmed") or 0),
                   shards=int(d.get("shards") or 1))


@dataclass(frozen=True)
class MemberRecord:
    """A cluster member and the addresses it registered ("" where it has none)."""

    name: str
    raft: str = ""  # the Raft port's host:port
    forward: str = ""  # the internal port: forwarded clients, replication, relays
    amqp: str = ""
    http: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MemberRecord:
        return cls(name=d["name"], raft=d.get("raft") or "", forward=d.get("forward") or "",
                   amqp=d.get("amqp") or "", http=d.get("http") or "")


@dataclass(frozen=True)
class UserRecord:
    name: str
    password_hash: str = ""
    hashing: str = ""  # "" for hashes stored before the algorithm was recorded
    tags: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UserRecord:
        return cls(name=d["name"], password_hash=d.get("password_hash", ""),
                   hashing=d.get("hashing", ""), tags=_strs(d.get("tags")))


@dataclass(frozen=True)
class PermissionRecord:
    """A user's configure/write/read regexes in one vhost."""

    user: str
    vhost: str
    configure: str
    write: str
    read: str

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PermissionRecord:
        return cls(user=d["user"], vhost=d["vhost"], configure=d["configure"],
                   write=d["write"], read=d["read"])


@dataclass(frozen=True)
class PolicyRecord:
    vhost: str
    name: str
    pattern: str = ""
    definition: Mapping[str, Any] = field(default_factory=dict)
    priority: int = 0
    apply_to: str = "all"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PolicyRecord:
        return cls(vhost=d["vhost"], name=d["name"], pattern=d.get("pattern", ""),
                   definition=dict(d.get("definition") or {}), priority=d.get("priority", 0),
                   apply_to=d.get("apply_to", "all"))


class ReplicatedTables(Protocol):
    """Where the mirror keeps the records, as committed (node/runtime/state.Runtime)."""

    vhost_defs: dict[str, dict]
    nodes: dict[str, dict]
    users: dict[str, dict]
    permissions: dict[str, dict[str, dict]]
    policies: dict[str, dict[str, dict]]


class Records:
    """Read-only, typed view of the replicated records.  Lists keep the mirror's order
    (commit order), so what the API lists does not depend on the view."""

    def __init__(self, tables: ReplicatedTables) -> None:
        self._tables = tables

    # ------------------------------------------------------------------ vhosts
    def vhost(self, name: str) -> VhostRecord | None:
        d = self._tables.vhost_defs.get(name)
        return VhostRecord.from_dict(d) if d is not None else None

    def vhosts(self) -> list[VhostRecord]:
        return [VhostRecord.from_dict(d) for d in self._tables.vhost_defs.values()]

    # ------------------------------------------------------------------ members
    def member(self, name: str) -> MemberRecord | None:
        d = self._tables.nodes.get(name)
        return MemberRecord.from_dict({**d, "name": name}) if d is not None else None

    def members(self) -> list[MemberRecord]:
        return [MemberRecord.from_dict({**d, "name": n}) for n, d in self._tables.nodes.items()]

    # ------------------------------------------------------------------ users
    def user(self, name: str) -> UserRecord | None:
        d = self._tables.users.get(name)
        return UserRecord.from_dict(d) if d is not None else None

    def users(self) -> list[UserRecord]:
        return [UserRecord.from_dict(d) for d in self._tables.users.values()]

    # ------------------------------------------------------------------ permissions
    def permission(self, vhost: str, user: str) -> PermissionRecord | None:
        d = self._tables.permissions.get(vhost, {}).get(user)
        return PermissionRecord.from_dict(d) if d is not None else None

    def permissions(self, vhost: str | None = None,
                    user: str | None = None) -> list[PermissionRecord]:
        """Every permission, or a vhost's, or a user's (vhost by vhost)."""
        tables = ([self._tables.permissions.get(vhost, {})] if vhost is not None
                  else list(self._tables.permissions.values()))
        return [PermissionRecord.from_dict(d) for perms in tables for u, d in perms.items()
                if user is None or u == user]

    # ------------------------------------------------------------------ policies
    def policy(self, vhost: str, name: str) -> PolicyRecord | None:
        d = self._tables.policies.get(vhost, {}).get(name)
        return PolicyRecord.from_dict(d) if d is not None else None

    def policies(self, vhost: str | None = None) -> list[PolicyRecord]:
        tables = ([self._tables.policies.get(vhost, {})] if vhost is not None
                  else list(self._tables.policies.values()))
        return [PolicyRecord.from_dict(d) for pols in tables for d in pols.values()]

    def policy_for(self, vhost: str, kind: str, name: str) -> PolicyRecord | None:
        """The policy in effect on queue or exchange `name` (`kind` "queue" or "exchange"),
        by the rule the broker applies (node/policies.py)."""
        d = policy_rules.matching_policy(self._tables.policies.get(vhost, {}), kind, name)
        return PolicyRecord.from_dict(d) if d is not None else None
