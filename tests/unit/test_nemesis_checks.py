"""The nemesis' depth check: copies compared on the same data only.

The figures are those of a soak that failed (seed 2001 on 3 shards): after a cut of the node
owning shards 0 and 2, each copy in turn made owner of every shard served these depths.
Every store held the same data when verify ran (shard 0 at offset 2889, shard 1 at 3620,
shard 2 at 2669); the epoch history each store kept says where each owner's term began:
shard 0 at 2890 (n1), 2895 (n2), 2896 (n3), shard 1 at 3621, 3622, 3623, shard 2 at 2670,
2675, 2676.  A takeover writes one record, so n1's terms on shards 0 and 2 wrote four
more: publishes that had sat in TCP's retransmission queue of a queue link since the cut
began, arriving after n1's depth of q0 was read and before its other queues' were.
"""

from __future__ import annotations

from tests.cluster.nemesis import rotation_verdict

SEED_2001 = {
    "n1@localhost": {"q0": 29368, "live0": 19, "q1": 8884, "live1": 0, "q2": 7794,
                     "live2": 19},
    "n2@localhost": {"q0": 29404, "live0": 19, "q1": 8884, "live1": 0, "q2": 7794,
                     "live2": 19},
    "n3@localhost": {"q0": 29404, "live0": 19, "q1": 8884, "live1": 0, "q2": 7794,
                     "live2": 19},
}


def _grown(verified: int, terms: list[int]) -> int:
    """Records a shard's store took during the rotation beyond its takeovers' own: from
    the offset verify agreed at to the first record of the last term, one per takeover."""
    return terms[-1] - verified - len(terms)


def test_depths_read_while_late_publishes_arrived_are_read_again() -> None:
    grown = [_grown(2889, [2890, 2895, 2896]), _grown(3620, [3621, 3622, 3623]),
             _grown(2669, [2670, 2675, 2676])]
    assert grown == [4, 0, 4]
    assert rotation_verdict(SEED_2001, grown) == "changed"


def test_depths_that_differ_on_unchanged_data_fail() -> None:
    assert rotation_verdict(SEED_2001, [0, 0, 0]) == "differ"


def test_equal_depths_agree_whatever_was_written() -> None:
    same = {n: dict(SEED_2001["n2@localhost"]) for n in SEED_2001}
    assert rotation_verdict(same, [0, 0, 0]) == "agree"
    assert rotation_verdict(same, [4, 0, 4]) == "agree"
