"""The pure rules of vhost replication: where copies go, who is promoted, which copy can
go on by stream and which needs a snapshot."""

from __future__ import annotations

from cluster import placement
from cluster.replication import continues_history

MEMBERS = ["n1", "n2", "n3", "n4"]


def test_replicas_spread_to_the_least_loaded_nodes() -> None:
    vhosts = [{"owner": "n1", "replicas": ["n2"]}, {"owner": "n2", "replicas": ["n1"]}]
    counts = placement.load(vhosts, MEMBERS)
    assert counts == {"n1": 2, "n2": 2, "n3": 0, "n4": 0}
    new = {"owner": "n1", "replicas": []}
    assert placement.repaired_replicas(new, MEMBERS, 2, counts) == ["n3", "n4"]
    assert placement.wanted_replicas({"replication_factor": None}, 3, 4) == 2
    assert placement.wanted_replicas({"replication_factor": 5}, 3, 4) == 3  # capped
    assert placement.wanted_replicas({"replication_factor": 1}, 3, 4) == 0
    assert placement.wanted_replicas({}, 3, 1) == 0  # a single node has nobody to copy to


def test_surplus_replicas_are_trimmed_out_of_sync_first_and_a_move_target_is_kept() -> None:
    counts = {m: 1 for m in MEMBERS}
    v = {"owner": "n1", "replicas": ["n2", "n3", "n4"], "in_sync": ["n3"]}
    assert placement.repaired_replicas(v, MEMBERS, 1, counts) == ["n3"]
    v["moving_to"] = "n4"
    assert placement.repaired_replicas(v, MEMBERS, 1, counts) == ["n4"]
    # one copy wanted (the owner's): the target of a move still keeps its copy
    v = {"owner": "n1", "replicas": ["n2"], "in_sync": [], "moving_to": "n2"}
    assert placement.repaired_replicas(v, MEMBERS, 0, counts) == ["n2"]
    # a forgotten member's copy does not count
    v = {"owner": "n1", "replicas": ["n9", "n2"], "in_sync": []}
    assert placement.repaired_replicas(v, MEMBERS, 2, counts) == ["n2", "n3"]


def test_promotion_takes_the_in_sync_replica_with_the_most_records() -> None:
    counts = {"n2": 5, "n3": 0}
    assert placement.promotion_choice(["n2", "n3"], {"n2": [1, 90], "n3": [1, 80]},
                                      counts) == "n2"
    assert placement.promotion_choice(["n2", "n3"], {"n2": [1, 90], "n3": [1, 90]},
                                      counts) == "n3"  # a tie goes to the least loaded
    # a replica that did not answer cannot be promoted; none answering: nobody
    assert placement.promotion_choice(["n2"], {"n2": [1, 10]}, counts) == "n2"
    assert placement.promotion_choice(["n2"], {"n3": [1, 10]}, counts) is None
    assert placement.promotion_choice([], {}, counts) is None
    # of two or more in-sync copies, two must answer: the owner may have confirmed without
    # one of them (on its way out of the set, the drop not yet committed), and the one that
    # answered alone may be that one
    assert placement.promotion_choice(["n2", "n3"], {"n3": [1, 10]}, counts) is None
    assert placement.promotion_choice(["n2", "n3", "n4"], {"n3": [1, 10], "n4": [1, 12]},
                                      counts) == "n4"


def test_promotion_compares_epoch_then_offset_and_never_goes_below_what_was_confirmed(
        ) -> None:
    counts = {"n2": 0, "n3": 0}
    # a copy of the newer epoch wins over one with more records of an older epoch
    assert placement.promotion_choice(["n2", "n3"], {"n2": [3, 50], "n3": [2, 90]},
                                      counts) == "n2"
    # half a snapshot (offset -1) or an empty copy is never promoted
    assert placement.promotion_choice(["n2", "n3"], {"n2": [0, -1], "n3": [0, 0]},
                                      counts) is None
    # nor one below the confirmed mark, from Raft or from any copy's report
    positions = {"n2": [2, 40, 0], "n3": [2, 30, 45]}
    assert placement.confirmed_mark({"confirmed": 20}, positions) == 45
    assert placement.promotion_choice(["n2", "n3"], positions, counts, 45) is None
    assert placement.promotion_choice(["n2", "n3"], positions, counts, 35) == "n2"


def test_which_copies_continue_the_owners_history() -> None:
    # epoch 1 wrote 1..99, epoch 2 began at 100 (a failover), epoch 4 at 250 (a move)
    epochs = [[1, 1], [2, 100], [4, 250]]
    assert continues_history((1, 99), epochs, 300)  # a replica of epoch 1, complete
    assert continues_history((1, 40), epochs, 300)  # behind, but a prefix
    # the old owner of epoch 1 wrote 100..120 after it lost ownership: those diverge
    assert not continues_history((1, 120), epochs, 300)
    assert continues_history((2, 249), epochs, 300)
    assert not continues_history((2, 250), epochs, 300)
    assert continues_history((4, 300), epochs, 300)
    assert not continues_history((4, 301), epochs, 300)  # ahead of the owner: impossible
    assert not continues_history((4, -1), epochs, 300)  # a half-loaded snapshot
    assert continues_history((0, 0), epochs, 300)  # an empty copy
    # an epoch the owner's history never had (a term whose records nobody kept)
    assert not continues_history((3, 200), epochs, 300)
    # an owner restarted in a new epoch at 150: its old term's records after 149 were
    # streamed before its crash and never committed: they diverge
    epochs = [[1, 1], [2, 100], [3, 150]]
    assert continues_history((2, 149), epochs, 300)
    assert not continues_history((2, 160), epochs, 300)
