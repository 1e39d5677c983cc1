"""Which shard to move next so that a vhost's shard owners spread evenly over the running
nodes, as `rabbitmq-queues rebalance` spreads queue leaders: a pure choice over the
placement records, one move at a time (the caller moves it live, then asks again).

Two counts per node: the vhost's own shards it owns, and every unit (vhost or shard, of any
vhost) it owns.  The first decides: a vhost is spread when no running node owns two more of
its shards than another, which is what lets one vhost use every node.  The second breaks
ties and places the remainder: among equally good moves the busiest node gives and the
idlest takes, and a move that leaves the vhost as spread as before is still made when it
evens out the nodes' total load by two or more.  Each move lowers (the vhost's imbalance,
the total imbalance) in that order, so a rebalance always ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cluster import shards


def next_move(units_of_vhost: Iterable[str], units: Mapping[str, Mapping[str, Any]],
              running: Iterable[str]) -> tuple[str, str, str] | None:
    """(unit, from node, to node) of the next move, or None when the vhost is spread.
    Only a running owner can move a shard (the move runs there); a shard whose owner is
    down is left to failover."""
    nodes = sorted(set(running))
    if len(nodes) < 2:
        return None
    total = {n: 0 for n in nodes}
    for d in units.values():
        if d.get("owner") in total:
            total[d["owner"]] += 1
    mine: dict[str, list[str]] = {n: [] for n in nodes}
    for unit in units_of_vhost:
        owner = (units.get(unit) or {}).get("owner")
        if owner in mine:
            mine[owner].append(unit)
    # the giver: most of the vhost's shards, then the busiest; the taker: the reverse
    giver = max(nodes, key=lambda n: (len(mine[n]), total[n], n))
    taker = min(nodes, key=lambda n: (len(mine[n]), total[n], n))
    gap = len(mine[giver]) - len(mine[taker])
    if gap >= 2 or (gap == 1 and total[giver] - total[taker] >= 2):
        unit = max(mine[giver], key=lambda u: shards.split(u)[1])
        return unit, giver, taker
    return None
