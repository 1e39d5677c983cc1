"""Shards of a vhost and their unit keys.

A vhost is split into shards, each the unit of placement (owner, epoch, replicas, store,
failover, move).  Shard 0 is the vhost itself: its unit key is the vhost's name, so a vhost
with one shard keeps every record and file it had.  Shard k >= 1 has the unit key
``name + SEPARATOR + str(k)``; vhost names never contain control characters
(node/runtime/definitions.py check_vhost_name), so no unit key of a shard is a vhost's name.
The placement machinery (roles, replication, failover, moves, stores) works on unit keys
and never needs to know which shard a unit is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

SEPARATOR = "\x1f"  # ASCII unit separator
MAX_SHARDS = 64


def unit_key(vhost: str, shard: int) -> str:
    return vhost if shard == 0 else f"{vhost}{SEPARATOR}{shard}"


def split(unit: str) -> tuple[str, int]:
    """(vhost, shard) of a unit key."""
    vhost, sep, index = unit.rpartition(SEPARATOR)
    if not sep or not index.isdigit():
        return unit, 0
    return vhost, int(index)


def label(unit: str) -> str:
    """A unit as logs and errors name it: "vhost 'orders'" or "vhost 'orders' shard 2"."""
    vhost, shard = split(unit)
    return f"vhost '{vhost}'" if shard == 0 else f"vhost '{vhost}' shard {shard}"


def count(vhost_record: Mapping[str, Any] | None) -> int:
    """How many shards a vhost has (a record without the field has one)."""
    if not vhost_record:
        return 1
    return int(vhost_record.get("shards") or 1)


def units(vhost: str, shard_count: int) -> list[str]:
    """The unit keys of a vhost of ``shard_count`` shards, shard 0 first."""
    return [unit_key(vhost, k) for k in range(shard_count)]


def units_of(vhost: str, vhost_record: Mapping[str, Any] | None) -> list[str]:
    return units(vhost, count(vhost_record))


def queue_shard(queue_record: Mapping[str, Any]) -> int:
    return int(queue_record.get("shard") or 0)


def balanced_shard(shards: int, queue_records: Iterable[Mapping[str, Any]]) -> int:
    """The shard with the fewest queues (the lowest index on a tie): RabbitMQ's
    `balanced` queue leader locator, counted in shards."""
    counts = [0] * shards
    for q in queue_records:
        k = queue_shard(q)
        if 0 <= k < shards:
            counts[k] += 1
    return min(range(shards), key=lambda k: (counts[k], k))
