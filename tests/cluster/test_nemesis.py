"""The fault-injection suite: seeded schedules of faults (tests.cluster.nemesis) on real
three-process clusters, each followed by the same checks: every node agrees on one owner and
epoch, every copy's digest agrees, each copy made owner serves the same depth, and every
confirmed message is consumed (duplicates allowed, never missing).

- the first scenario that lost confirmed messages, as a fixed schedule;
- the whole cluster crashed and restarted in every order;
- a vhost of 3 shards (one per node, publishers and consumers on nodes that do not own
  their queue's shard): kill -9 of a shard's owner, a shard moved under load, the whole
  cluster crashed; the checks then run for every shard and every queue;
- a random schedule from a seed (printed; WARREN_NEMESIS_SEED replays it, with
  WARREN_NEMESIS_STEPS steps), partitions included, on a one-shard vhost (even seeds) or,
  shorter, on a vhost of 3 shards (odd seeds; WARREN_NEMESIS_SHARDS chooses): it fails,
  with the reason, where network namespaces cannot be made.

The soak runs many seeds for an hour or more: `python3 -m tests.cluster.nemesis --soak 3600`.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time

import pytest

from tests.cluster import nemesis
from tests.cluster.conftest import Cluster, netns_cluster
from tests.cluster.harness import (
    log_tails,
    wait_epoch_change,
    wait_vhost,
)
from tests.cluster.nemesis import SETTINGS, VHOST, World, settle_and_check

log = logging.getLogger("tests.nemesis")


@pytest.fixture
def loop_cluster(tmp_path):
    c = Cluster(tmp_path, **SETTINGS)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_a_schedule_is_a_function_of_its_seed():
    a, b = nemesis.generate(1234, 12), nemesis.generate(1234, 12)
    assert [str(s) for s in a] == [str(s) for s in b]
    assert [str(s) for s in nemesis.generate(1235, 12)] != [str(s) for s in a]
    # over a few seeds every nemesis is drawn; without partitions, none of those
    drawn = {s.nemesis for seed in range(40) for s in nemesis.generate(seed, 10)}
    assert drawn == set(nemesis.NEMESES)
    quiet = {s.nemesis for seed in range(40)
             for s in nemesis.generate(seed, 10, partitions=False)}
    assert not quiet & nemesis.PARTITIONS
    assert nemesis.describe(7, nemesis.generate(7, 3)).startswith("seed 7: 1. ")
    # on a sharded vhost: each step names its shard, a rebalance is drawn, no forget
    sharded = [nemesis.generate(seed, 10, shards=3) for seed in range(40)]
    assert [str(s) for s in sharded[3]] == [str(s) for s in nemesis.generate(3, 10, shards=3)]
    assert all(0 <= s.params["shard"] < 3 for steps in sharded for s in steps)
    assert {s.params["shard"] for steps in sharded for s in steps} == {0, 1, 2}
    drawn = {s.nemesis for steps in sharded for s in steps}
    assert drawn == (set(nemesis.NEMESES) - nemesis.NOT_SHARDED) | set(nemesis.SHARD_NEMESES)


# =========================================================================================
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_first_scenario_owners_killed_in_turn_while_copies_load(loop_cluster: Cluster):
    """Factor 3, failover timeout 2 s, confirming publishers, a 30k x 1 KB backlog:
    kill -9 the owner A (B promoted); restart A and while it loads kill -9 B (C promoted);
    restart B and kill -9 C (unavailable if nobody else is in sync); restart C, which must
    serve in a new epoch; kill -9 C again; heal and count.  The backlog grows by 60k while
    A is down, so that A comes back far behind and is still loading at the next kills."""
    c = loop_cluster
    w = World(c).setup(backlog=30000)
    a = w.owner()
    st0 = w.wait_all_in_sync()
    w.note(f"1. A={a.name} owns {VHOST} at epoch {st0['epoch']}")
    w.kill(a)
    st1 = wait_epoch_change(c, VHOST, st0, via=[n for n in c.nodes if n.running],
                            timeout=60, since=time.monotonic())
    b = c.by_name(st1["owner"])
    w.progress("after A's kill")
    w.load_backlog(60000)  # A comes back 60k behind
    w.note(f"2. B={b.name} promoted at epoch {st1['epoch']}; restart A, kill B while A loads")
    w.restart(a)
    st = w.state()
    w.note(f"   A back: in sync {st['in_sync']}, lag {st.get('lag')}")
    w.kill(b)
    st2 = wait_epoch_change(c, VHOST, st1, via=[n for n in c.nodes if n.running],
                            timeout=60, since=time.monotonic())
    cc = c.by_name(st2["owner"])
    w.note(f"3. C={cc.name} promoted at epoch {st2['epoch']} (in sync {st2['in_sync']}); "
           f"restart B, kill C")
    b.launch()  # B restarting (and then catching up from C) while A still loads
    st = w.state()
    w.note(f"   B restarting: in sync {st['in_sync']}, lag {st.get('lag')}")
    w.kill(cc)
    b.wait(90)
    time.sleep(nemesis.FAILOVER_TIMEOUT * 2)
    st3 = w.state()
    w.note(f"   C killed: {st3}")
    if st3["epoch"] == st2["epoch"]:
        # nobody else was in sync: no unclean promotion, the vhost waits for C
        assert st3["available"] is False, st3
    w.note("4. restart C")
    w.restart(cc)
    st4 = wait_vhost(c, VHOST, lambda s: s["available"] and s["epoch"] > st2["epoch"],
                     timeout=90, what="the vhost served again, in a new epoch")
    w.note(f"   served by {st4['owner']} at epoch {st4['epoch']}, in sync {st4['in_sync']}")
    # whoever serves now, C restarted or a copy promoted meanwhile, it is a new owner term
    assert st4["epoch"] > st2["epoch"], (st2, st4)
    st4 = wait_vhost(c, VHOST, lambda s: s["in_sync"], timeout=90,
                     what="a copy in sync with the owner of the new epoch")
    w.progress("in the new epoch", more=100)
    owner = c.by_name(st4["owner"])
    w.note(f"5. kill -9 {owner.name} again (in sync {st4['in_sync']})")
    w.kill(owner)
    st5 = wait_epoch_change(c, VHOST, st4, via=[n for n in c.nodes if n.running],
                            timeout=60, since=time.monotonic())
    w.note(f"   {st5['owner']} promoted at epoch {st5['epoch']}")
    w.progress("after the last kill")
    r = settle_and_check(w)
    log.warning("first scenario: confirmed %s, consumed %s, duplicates %s, events:\n%s",
                r.confirmed, r.consumed, r.duplicates, "\n".join(r.events))


# =========================================================================================
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_whole_cluster_crashed_and_restarted_in_every_order(loop_cluster: Cluster):
    c = loop_cluster
    w = World(c).setup(backlog=5000)
    for order in itertools.permutations(range(3)):
        st = w.wait_all_in_sync()
        w.progress(f"before the crash, restart order {order}")
        owner_first = [w.owner(), *w.replicas()]
        # 2.5 s apart: the first two form a Raft majority (and may fail the vhost over)
        # before the third returns
        nemesis.crash_all(w, {"order": list(order), "gap": 2.5})
        w.progress(f"after restarting in order {[owner_first[k].name for k in order]}")
        st = w.wait_all_in_sync(timeout=180)
        # the copies agree after each crash: a later snapshot must not hide a divergence
        nemesis.verify_copies(w)
        log.warning("crash, restart in order %s: owner %s epoch %s",
                    [owner_first[k].name for k in order], st["owner"], st["epoch"])
    settle_and_check(w)


# =========================================================================================
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sharded_vhost_owner_killed_shard_moved_and_cluster_crashed(loop_cluster: Cluster):
    """A vhost of 3 shards, one per node, 3 copies each; a backlog and a live queue on
    every shard, published to through nodes that do not own the shard (every publish
    crosses a queue link), each live queue consumed through yet another node.  kill -9 of
    shard 1's owner while it is the replica of the others; shard 2 moved while everything
    publishes; the whole cluster crashed and restarted; then, for every shard: one owner and
    epoch on every node, the copies' digests agree, each node made owner serves the same
    depths, and every confirmed message of every queue is consumed."""
    c = loop_cluster
    w = World(c, shards=3).setup(backlog=6000)
    owners = [w.state(k)["owner"] for k in range(3)]
    assert sorted(owners) == sorted(n.name for n in c.nodes), owners  # one shard per node
    # most publishes crossed a queue link: each publisher's node does not own its shard
    assert all(conn[1] != owners[k] for k, g in enumerate(w.groups) for p in g.all
               for conn in p.snapshot("connects")[:1]), owners

    w.focus = 1
    before = w.wait_all_in_sync()
    nemesis.kill_owner(w, {"down": 1.0})
    after = w.state()
    assert after["epoch"] > before["epoch"] and after["owner"] != before["owner"], \
        (before, after)
    # the other shards kept their owner and epoch through the kill
    for k in (0, 2):
        assert w.state(k)["owner"] == owners[k], (k, owners, w.state(k))
    w.progress("after shard 1's owner was killed", more=60)

    w.focus = 2
    st = w.wait_all_in_sync()
    target = w.replicas()[0]
    connects = {p.name: len(p.snapshot("connects")) for p in w.publishers()}
    on_old_owner = [p.name for p in w.publishers()
                    if p.snapshot("connects")[-1][1] == st["owner"]]
    code, body = w.move(target)
    assert code == 200 and isinstance(body, dict), (code, body)
    assert body["owner"] == target.name and body["epoch"] > st["epoch"], (st, body)
    w.progress("after shard 2 moved", more=60)
    # a move closes no connection: those on the old owner publish on, confirmed
    assert on_old_owner, "no publisher on the old owner: the move would test nothing"
    assert {p.name: len(p.snapshot("connects")) for p in w.publishers()} == connects, \
        ([p.snapshot("errors")[-3:] for p in w.publishers()], on_old_owner)

    w.focus = 0
    w.wait_all_in_sync()
    nemesis.crash_all(w, {"order": [1, 2, 0], "gap": 1.0})
    w.progress("after the whole cluster restarted", more=60)
    r = settle_and_check(w)
    assert set(r.confirmed) == {f"{q}{k}" for q in ("q", "live") for k in range(3)}
    assert all(n > 0 for n in r.confirmed.values()), r.confirmed
    log.warning("sharded schedule: confirmed %s, consumed %s, duplicates %s, events:\n%s",
                r.confirmed, r.consumed, r.duplicates, "\n".join(r.events))


# =========================================================================================
def _seed() -> int:
    return int(os.environ.get("WARREN_NEMESIS_SEED") or random.randrange(1_000_000))


def _shards(seed: int) -> int:
    """A random schedule runs on a one-shard vhost or on one of 3 shards, from its seed (so
    that the seed alone replays it); WARREN_NEMESIS_SHARDS chooses."""
    return int(os.environ.get("WARREN_NEMESIS_SHARDS") or (3 if seed % 2 else 1))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_seeded_schedule(netns_lab, tmp_path):
    seed = _seed()
    shards = _shards(seed)
    # the sharded schedule is shorter: each of its steps checks three shards
    steps = int(os.environ.get("WARREN_NEMESIS_STEPS", "8" if shards == 1 else "4"))
    schedule = nemesis.generate(seed, steps, shards=shards)
    # printed first, so that a failure (or a hang) can be replayed
    print(f"\nnemesis ({shards} shard(s)) {nemesis.describe(seed, schedule)}\n"
          f"replay: WARREN_NEMESIS_SEED={seed} WARREN_NEMESIS_STEPS={steps} "
          f"python3 -m pytest tests/cluster/test_nemesis.py -k seeded", flush=True)
    log.warning("nemesis %s", nemesis.describe(seed, schedule))
    with netns_cluster(netns_lab, tmp_path, **SETTINGS) as c:
        w = World(c, netns_lab, shards=shards).setup(backlog=10000)
        try:
            w.run(schedule)
        except BaseException:
            log.error("seed %d failed after events:\n%s\n%s", seed, "\n".join(w.events),
                      log_tails(c, 30))
            raise
        r = settle_and_check(w, seed, schedule)
    log.warning("seed %d: confirmed %s, consumed %s, duplicates %s, events:\n%s", seed,
                r.confirmed, r.consumed, r.duplicates, "\n".join(r.events))
