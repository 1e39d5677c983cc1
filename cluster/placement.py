"""Where a vhost's copies go: pure choices over the definitions, so that every node (and
every test) computes the same answer from the same state.

Load is counted in roles: owning a vhost or holding a replica of it each count one.  New
owners and replicas go to the least loaded nodes (ties by name), which spreads copies
evenly as vhosts are created and as nodes join.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def load(vhosts: Iterable[Mapping[str, Any]], members: Iterable[str]) -> dict[str, int]:
    counts = {m: 0 for m in members}
    for v in vhosts:
        for node in [v.get("owner"), *v.get("replicas", [])]:
            if node in counts:
                counts[node] += 1
    return counts


def least_loaded(candidates: Iterable[str], counts: Mapping[str, int]) -> list[str]:
    return sorted(candidates, key=lambda n: (counts.get(n, 0), n))


def wanted_replicas(vhost: Mapping[str, Any], default_factor: int, members: int) -> int:
    """Replicas (copies besides the owner) a vhost should have in a cluster of ``members``."""
    factor = vhost.get("replication_factor") or default_factor
    return max(min(factor, members) - 1, 0)


def repaired_replicas(vhost: Mapping[str, Any], members: list[str], want: int,
                      counts: Mapping[str, int]) -> list[str]:
    """The vhost's replica list after adding or trimming copies to reach ``want``: new ones
    on the least loaded members; surplus ones trimmed out-of-sync first."""
    owner = vhost.get("owner")
    in_sync = set(vhost.get("in_sync", []))
    current = [r for r in vhost.get("replicas", []) if r in members and r != owner]
    if len(current) < want:
        spare = [m for m in members if m != owner and m not in current]
        current += least_loaded(spare, counts)[: want - len(current)]
    elif len(current) > want:
        pinned = vhost.get("moving_to")
        keep = sorted(current, key=lambda n: (n != pinned, n not in in_sync,
                                              -counts.get(n, 0), n))[:want]
        # a move's target stays even where no copy is wanted (one copy: the owner's)
        current = [r for r in current if r in keep or r == pinned]
    return current


def confirmed_mark(vhost: Mapping[str, Any], positions: Mapping[str, list[int]]) -> int:
    """The highest offset known to be confirmed: recorded in Raft when an in-sync replica
    was dropped, or reported by a copy (the owner streams it as ``hw``)."""
    marks = [int(p[2]) for p in positions.values() if len(p) > 2]
    return max([int(vhost.get("confirmed", 0) or 0), *marks])


def too_few_answers(in_sync: list[str], positions: Mapping[str, list[int]]) -> bool:
    """Whether fewer in-sync replicas answered than a promotion needs: two of them when
    there are two or more (see `promotion_choice`)."""
    return sum(n in positions for n in in_sync) < min(2, len(in_sync))


def promotion_choice(in_sync: Iterable[str], positions: Mapping[str, list[int]],
                     counts: Mapping[str, int], confirmed: int = 0) -> str | None:
    """The in-sync replica whose copy goes furthest, by (epoch, offset) as Kafka compares
    log ends (then the least loaded, then by name); None when no in-sync replica answered
    with a complete copy.  A copy is complete when it holds at least one record (every
    owner writes its epoch's first record at once), is not half a snapshot (offset -1),
    and reaches the confirmed mark: no promotion may lose a confirmed message.

    With two or more in-sync replicas, two of them must have answered: the owner confirms
    without one copy on its way out of the in-sync set before Raft has dropped it
    (`ReplicationSource.required`), so any single copy may lack the newest confirms, but
    of any two, one has them, and comparing their ends finds it."""
    in_sync = list(in_sync)
    if too_few_answers(in_sync, positions):
        return None
    best = [n for n in in_sync if n in positions
            and positions[n][1] >= max(confirmed, 1)]
    if not best:
        return None
    return min(best, key=lambda n: (-positions[n][0], -positions[n][1], counts.get(n, 0), n))
