"""Which shard a rebalance moves next (cluster/rebalance.py): a pure choice."""

from __future__ import annotations

from cluster import shards
from cluster.rebalance import next_move


def units(vhost: str, owners: list[str]) -> dict[str, dict]:
    return {shards.unit_key(vhost, k): {"owner": o} for k, o in enumerate(owners)}


def plan(all_units: dict[str, dict], vhost: str, running: list[str]) -> list[tuple]:
    """Every move until the vhost is spread, applied as the cluster would."""
    keys = [u for u in all_units if shards.split(u)[0] == vhost]
    moves = []
    while (step := next_move(keys, all_units, running)) is not None:
        moves.append(step)
        all_units[step[0]]["owner"] = step[2]
        assert len(moves) < 20
    return moves


def test_shards_piled_on_one_node_spread_one_per_node() -> None:
    u = units("v", ["a", "a", "a"])
    assert plan(u, "v", ["a", "b", "c"]) == [("v\x1f2", "a", "b"), ("v\x1f1", "a", "c")]
    assert sorted(d["owner"] for d in u.values()) == ["a", "b", "c"]


def test_a_spread_vhost_does_not_move_and_a_down_owner_is_left_alone() -> None:
    assert plan(units("v", ["a", "b", "c", "a"]), "v", ["a", "b", "c"]) == []
    # c is down: its shards are failover's business; the rest spread over a and b
    u = units("v", ["c", "c", "a", "a", "a"])
    assert plan(u, "v", ["a", "b"]) == [("v\x1f4", "a", "b")]
    assert plan(units("v", ["a", "a"]), "v", ["a"]) == []  # nowhere to go


def test_the_remainder_goes_to_the_node_that_owns_least_overall() -> None:
    # other vhosts load a and b: v's fourth shard's owner should be c, not a or b
    u = {**units("v", ["a", "a", "b", "c"]), **units("w", ["a", "b"]), **units("x", ["a"])}
    assert plan(u, "v", ["a", "b", "c"]) == [("v\x1f1", "a", "c")]
    assert [u[k]["owner"] for k in ("v", "v\x1f1", "v\x1f2", "v\x1f3")] == ["a", "c", "b", "c"]
