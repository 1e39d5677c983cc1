"""Seeded fault schedules (nemeses) for real three-process clusters, and the checks after them.

A schedule is a list of steps drawn from one seed by `generate(seed, steps)`: the same seed
gives the same schedule (which node is "the owner" is resolved when the step runs, from the
cluster's state).  Each step injects one fault, or two at once, and undoes it before the
next one begins, but the next one does not necessarily wait for the copies to catch up:
compound faults come from steps that follow each other closely.  The nemeses:

- kill -9 of the owner, of a replica, of the Raft leader, of two nodes at once;
- the whole cluster crashed and restarted in a given order;
- SIGSTOP of the owner or of a replica, shorter or longer than the failover timeout;
- partitions (network namespaces, tests.cluster.netns): the owner cut off while it leads
  Raft and while it does not, a replica cut off, one node deaf to the others (asymmetric);
- a replica restarted behind a large backlog and, while it catches up, a second fault;
- the vhost moved to another copy while a consumer is active;
- a replica killed, forgotten while down (`forget_cluster_node`) and replaced by a new node.

While a schedule runs, publishers with confirms send to a backlog queue (never consumed until
the end) and to a live queue that a background consumer drains throughout.  After it, every
fault is healed and `settle_and_check` asserts: every node agrees on one owner and epoch;
every copy's digest agrees (`POST /api/cluster/vhosts/{vhost}/verify`); each copy in turn
is made owner and serves the same depth; and every confirmed id is consumed, exactly or
duplicated, never missing.

`python3 -m tests.cluster.nemesis --soak SECONDS --seed N` runs schedule after schedule (one
fresh cluster each, seeds N, N+1, ...) and prints each one's schedule, confirmed counts and
result.  The tests (tests/cluster/test_nemesis.py) replay a seed given in WARREN_NEMESIS_SEED.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pika
import pika.exceptions

from tests.cluster.conftest import SECRET, Cluster
from tests.cluster.harness import (
    BackgroundConsumer,
    Drained,
    Publisher,
    Publishers,
    amqp_params,
    assert_confirmed_present,
    create_vhost,
    drain,
    log_tails,
    vhost_path,
    vhost_state,
    wait_in_sync,
    wait_vhost,
)
from tests.nodeproc import NodeProcess

log = logging.getLogger("tests.nemesis")

VHOST = "orders"
BACKLOG, LIVE = "q", "live"
FAILOVER_TIMEOUT = 2
SETTINGS = {"replication_factor": "3", "failover_timeout": str(FAILOVER_TIMEOUT)}

# the nemeses a schedule draws from, with their weights; partitions need network namespaces
NEMESES: dict[str, int] = {
    "kill_owner": 3, "kill_replica": 2, "kill_leader": 2, "kill_two": 2, "crash_all": 2,
    "pause_owner": 2, "pause_replica": 1, "snapshot_then_fault": 2, "move": 2,
    "forget_replica": 1,
    "cut_owner_leading": 2, "cut_owner_following": 2, "cut_replica": 1, "cut_one_way": 1,
}
PARTITIONS = {n for n in NEMESES if n.startswith("cut_")}


class PartitionUnavailable(AssertionError):
    """A schedule with a partition, on a machine where partitions cannot be made: a failure
    with the reason, never a skip."""


# =========================================================================================
# schedules
# =========================================================================================
@dataclass
class Step:
    nemesis: str
    params: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.nemesis}({', '.join(f'{k}={v}' for k, v in self.params.items())})"


def _params(nemesis: str, rng: random.Random) -> dict[str, Any]:
    """What a step needs besides the cluster's state; drawn in one fixed order per nemesis."""
    p: dict[str, Any] = {"sync_first": rng.random() < 0.5,  # all copies in sync before it
                         "delay": round(rng.uniform(0.0, 1.0), 2)}  # into the step's load
    if nemesis.startswith("kill_"):
        p["down"] = round(rng.uniform(0.0, 4.0), 2)
        if nemesis == "kill_replica":
            p["which"] = rng.randrange(2)
        if nemesis == "kill_two":
            p["with_owner"] = rng.random() < 0.6
            p["gap"] = round(rng.uniform(0.0, 1.0), 2)  # between the restarts
    elif nemesis == "crash_all":
        order = [0, 1, 2]
        rng.shuffle(order)
        p["order"] = order  # restart order, by index in the owner-first list
        p["gap"] = round(rng.uniform(0.0, 2.0), 2)
    elif nemesis.startswith("pause_"):
        # below the failover timeout (nothing should happen) or well beyond it
        p["seconds"] = rng.choice([round(FAILOVER_TIMEOUT * 0.4, 2),
                                   round(rng.uniform(FAILOVER_TIMEOUT * 1.5,
                                                     FAILOVER_TIMEOUT * 4), 2)])
        if nemesis == "pause_replica":
            p["which"] = rng.randrange(2)
    elif nemesis == "snapshot_then_fault":
        # the copy that falls behind: the owner (killed, so that it returns as a replica
        # whose history the new owner's change log does not reach) or a replica (behind by
        # more than the owner's 64 MiB change log when the backlog is 70k x 1 KB)
        p["behind"] = rng.choice(["owner", "replica"])
        p["which"] = rng.randrange(2)
        p["backlog"] = rng.choice([20000, 70000])
        p["second"] = rng.choice(["kill_owner", "kill_catching_up", "kill_other_replica",
                                  "pause_owner", "crash_all"])
        p["after"] = round(rng.uniform(0.0, 1.0), 2)  # after the copy listens again
    elif nemesis == "move":
        p["which"] = rng.randrange(2)
    elif nemesis == "forget_replica":
        p["which"] = rng.randrange(2)
    elif nemesis.startswith("cut_"):
        p["seconds"] = round(rng.uniform(FAILOVER_TIMEOUT * 1.5, FAILOVER_TIMEOUT * 5), 2)
        if nemesis == "cut_one_way":
            p["who"] = rng.choice(["owner", "replica"])
            p["deaf"] = rng.random() < 0.5  # hears nothing (else: says nothing)
        if nemesis == "cut_replica":
            p["which"] = rng.randrange(2)
    return p


def generate(seed: int, steps: int, partitions: bool = True) -> list[Step]:
    """The schedule of `seed`: a pure function of its arguments."""
    rng = random.Random(seed)
    names = [n for n in NEMESES if partitions or n not in PARTITIONS]
    weights = [NEMESES[n] for n in names]
    out: list[Step] = []
    forgot = False
    while len(out) < steps:
        nemesis = rng.choices(names, weights)[0]
        if nemesis == "forget_replica":
            if forgot:  # membership changes are slow: one per schedule
                continue
            forgot = True
        out.append(Step(nemesis, _params(nemesis, rng)))
    return out


def describe(seed: int, schedule: Sequence[Step]) -> str:
    return f"seed {seed}: " + "; ".join(f"{i + 1}. {s}" for i, s in enumerate(schedule))


# =========================================================================================
# the world a schedule runs in
# =========================================================================================
class World:
    """A cluster with a replicated vhost, its publishers and consumer, and what the faults
    have done to it (down, paused, cut off)."""

    def __init__(self, cluster: Cluster, lab: Any = None, *, rate: float = 150.0) -> None:
        self.c = cluster
        self.lab = lab
        self.rate = rate
        self.cred = {"user": cluster.user, "password": cluster.password}
        self.paused: set[str] = set()
        self.cut: set[str] = set()
        self.extra: list[Publisher] = []     # backlog loaders: their confirms count too
        self.forgotten: list[NodeProcess] = []
        self.events: list[str] = []
        self.pubs: Publishers | None = None
        self.live: Publisher | None = None
        self.consumer: BackgroundConsumer | None = None
        self.next_name = len(cluster.nodes) + 1

    # ------------------------------------------------------------------ set up
    def setup(self, backlog: int = 0, body_size: int = 1024) -> "World":
        c = self.c
        c.wait_until(lambda: all(n["running"] for n in c.status(c.nodes[0])["nodes"]),
                     timeout=60, what="all Raft links")
        create_vhost(c, VHOST, c.nodes[0], 3, queues=(BACKLOG, LIVE))
        wait_in_sync(c, VHOST, 2, timeout=90)
        if backlog:
            self.load_backlog(backlog, body_size)
        self.pubs = Publishers(c.nodes, VHOST, BACKLOG, confirm_timeout=3, rate=self.rate,
                               **self.cred).start()
        self.live = Publisher(c.nodes, VHOST, LIVE, name="live", confirm_timeout=3,
                              rate=self.rate / 2, start=1, **self.cred)
        self.live.start()
        self.consumer = BackgroundConsumer(c.nodes, VHOST, LIVE, **self.cred)
        self.consumer.start()
        self.pubs.wait_confirms(100, timeout=60, what="before the first fault")
        return self

    def load_backlog(self, n: int, body_size: int = 1024) -> None:
        """`n` more confirmed messages of `body_size` bytes in the backlog queue, fast."""
        p = Publisher(self.live_nodes(), VHOST, BACKLOG, name=f"backlog{len(self.extra)}",
                      window=500, rate=0.0, confirm_timeout=10, body_size=body_size,
                      **self.cred)
        self.extra.append(p)
        p.start()
        last, progressed = 0, time.monotonic()
        while (got := p.confirmed_count()) < n:
            if p.failure is not None:
                raise RuntimeError("backlog loader crashed") from p.failure
            if got > last:
                last, progressed = got, time.monotonic()
            elif time.monotonic() - progressed > 20:  # the vhost is unavailable meanwhile
                self.note(f"backlog: no confirm for 20 s after {got}; going on")
                break
            time.sleep(0.1)
        p.stop(settle=10)
        self.note(f"backlog: {p.confirmed_count()} x {body_size} B confirmed")

    # ------------------------------------------------------------------ reading the state
    def note(self, what: str) -> None:
        log.warning("nemesis: %s", what)
        self.events.append(f"{time.strftime('%H:%M:%S')} {what}")

    def live_nodes(self) -> list[NodeProcess]:
        """Nodes that answer and see the majority's view."""
        return [n for n in self.c.nodes
                if n.running and n.name not in self.paused and n.name not in self.cut]

    def state(self) -> dict:
        return vhost_state(self.c, VHOST, via=self.live_nodes() or None)

    def owner(self) -> NodeProcess:
        return self.c.by_name(self.state()["owner"])

    def replicas(self) -> list[NodeProcess]:
        """The other copies, ordered by name (a step's `which` picks one)."""
        owner = self.state()["owner"]
        return sorted((n for n in self.c.nodes if n.name != owner), key=lambda n: n.name)

    def leader(self) -> NodeProcess | None:
        for n in self.live_nodes():
            try:
                return self.c.leader(n)
            except Exception:  # restarting
                continue
        return None

    def wait_all_in_sync(self, timeout: float = 120.0) -> dict:
        return wait_in_sync(self.c, VHOST, 2, via=self.live_nodes(), timeout=timeout)

    def progress(self, what: str, more: int = 20, timeout: float = 120.0) -> None:
        """The vhost serves again: `more` further confirms (liveness, not speed)."""
        assert self.pubs is not None
        self.pubs.wait_confirms(more, timeout=timeout, what=what)

    # ------------------------------------------------------------------ faults
    def kill(self, node: NodeProcess) -> None:
        node.kill()
        self.note(f"kill -9 {node.name}")

    def restart(self, node: NodeProcess, wait: bool = True) -> None:
        node.launch()
        if wait:
            node.wait(90)
        self.note(f"restart {node.name}")

    def pause(self, node: NodeProcess) -> None:
        node.pause()
        self.paused.add(node.name)
        self.note(f"SIGSTOP {node.name}")

    def resume(self, node: NodeProcess) -> None:
        node.resume()
        self.paused.discard(node.name)
        self.note(f"SIGCONT {node.name}")

    def partition(self, node: NodeProcess, one_way: str | None = None) -> None:
        """Cut `node` off from the other nodes (its clients still reach it); `one_way`
        "in" (it hears nothing) or "out" (nothing it says arrives)."""
        if self.lab is None:
            raise PartitionUnavailable("this schedule has a partition but the world has no "
                                       "network namespaces")
        i = self.c.nodes.index(node)
        if one_way is None:
            self.lab.cut(i)
        else:
            self.lab.cut_one_way(i, one_way)
        self.cut.add(node.name)
        self.note(f"cut off {node.name}" + (f" ({one_way} only)" if one_way else "")
                  + f"; Raft leader {getattr(self.leader(), 'name', None)}")

    def heal(self) -> None:
        if self.lab is not None and self.cut:
            self.lab.heal()
            self.note(f"healed {sorted(self.cut)}")
            self.cut.clear()
            # a healed node may still believe in the owner it knew: no step may act on that
            # view, and the split must end (one owner and epoch on every node)
            self.c.wait_until(lambda: len(self.views()) == 1, timeout=60,
                              what="every node agreeing on the owner after the heal")
        self.cut.clear()

    def views(self) -> set[tuple[str, int]]:
        """(owner, epoch) of the vhost as each live node sees it."""
        return {(s["owner"], s["epoch"]) for n in self.live_nodes()
                for s in [vhost_state(self.c, VHOST, via=[n])]}

    def move(self, target: NodeProcess, timeout: float = 180) -> tuple[int, object]:
        via = self.live_nodes()[0]
        t = time.monotonic()
        code, body = self.c.http(via, "POST", vhost_path(VHOST) + "/move",
                                 {"node": target.name}, timeout=timeout)
        self.note(f"move to {target.name}: {code} {body} in {time.monotonic() - t:.2f}s")
        return code, body

    def heal_all(self) -> None:
        """Undo every fault still standing: heal cuts, resume paused nodes, start dead ones."""
        self.heal()
        for n in self.c.nodes:
            if n.name in self.paused:
                self.resume(n)
        down = [n for n in self.c.nodes if not n.running]
        for n in down:
            self.restart(n, wait=False)
        for n in down:
            n.wait(90)

    def replace_nodes(self, old: NodeProcess, new: NodeProcess) -> None:
        i = self.c.nodes.index(old)
        self.c.nodes[i] = new
        for p in self.publishers():
            if old in p.nodes:
                p.nodes[p.nodes.index(old)] = new
        if self.consumer is not None and old in self.consumer.drainer.nodes:
            nodes = self.consumer.drainer.nodes
            nodes[nodes.index(old)] = new

    def publishers(self) -> list[Publisher]:
        return [*(self.pubs.all if self.pubs else []), *([self.live] if self.live else []),
                *self.extra]

    # ------------------------------------------------------------------ running
    def run(self, schedule: Sequence[Step]) -> None:
        for i, step in enumerate(schedule):
            self.note(f"step {i + 1}/{len(schedule)}: {step}")
            if step.params.get("sync_first"):
                self.wait_all_in_sync()
            time.sleep(step.params.get("delay", 0.0))
            NEMESIS_STEPS[step.nemesis](self, step.params)
            self.progress(f"step {i + 1} ({step})")

    def stop_clients(self) -> Drained:
        assert self.pubs is not None and self.live is not None and self.consumer is not None
        self.pubs.stop()
        self.live.stop()
        return self.consumer.stop()

    def confirmed(self, queue: str) -> set[str]:
        assert self.pubs is not None and self.live is not None
        if queue == LIVE:
            return set(self.live.confirmed)
        return self.pubs.confirmed.union(*(p.confirmed for p in self.extra))


# =========================================================================================
# the nemeses (each undoes its fault before it returns)
# =========================================================================================
def _kill_and_restart(w: World, victims: list[NodeProcess], p: dict) -> None:
    before = w.state()
    for v in victims:
        w.kill(v)
    if any(v.name == before["owner"] for v in victims):
        survivors = [n for n in w.c.nodes if n.running]
        # a failover can happen only with a Raft majority and an in-sync survivor
        if len(survivors) >= 2 and any(s.name in before["in_sync"] for s in survivors):
            st = wait_vhost(w.c, VHOST, lambda s: s["epoch"] > before["epoch"],
                            via=survivors, timeout=60, what="a failover")
            w.note(f"failover: {before['owner']} -> {st['owner']}, epoch {before['epoch']} "
                   f"-> {st['epoch']}")
    if not p.get("restart", True):
        return
    time.sleep(p.get("down", 0.0))
    for v in victims:
        w.restart(v, wait=False)
        time.sleep(p.get("gap", 0.0))
    for v in victims:
        v.wait(90)


def kill_owner(w: World, p: dict) -> None:
    _kill_and_restart(w, [w.owner()], p)


def kill_replica(w: World, p: dict) -> None:
    _kill_and_restart(w, [w.replicas()[p["which"]]], p)


def kill_leader(w: World, p: dict) -> None:
    leader = w.leader()
    if leader is None:
        w.note("no Raft leader to kill; killing the owner")
        leader = w.owner()
    _kill_and_restart(w, [leader], p)


def kill_two(w: World, p: dict) -> None:
    replicas = w.replicas()
    victims = [w.owner(), replicas[0]] if p["with_owner"] else replicas
    _kill_and_restart(w, victims, p)


def crash_all(w: World, p: dict) -> None:
    """Every node killed at once, restarted in `order` (indexes in owner-first order)."""
    owner_first = [w.owner(), *w.replicas()]
    before = w.state()
    for n in w.c.nodes:
        n.kill()
    w.note(f"kill -9 all (owner {before['owner']}, epoch {before['epoch']}, in sync "
           f"{before['in_sync']})")
    for k in p["order"]:
        w.restart(owner_first[k], wait=False)
        time.sleep(p["gap"])
    for n in w.c.nodes:
        n.wait(90)
    st = wait_vhost(w.c, VHOST, lambda s: s["available"], timeout=90,
                    what="the vhost served after the whole cluster restarted")
    w.note(f"after the restart: owner {st['owner']} epoch {st['epoch']}")
    # every owner term is a new epoch: whoever serves after a crash serves a later one
    assert st["epoch"] > before["epoch"], (before, st)


def _pause(w: World, node: NodeProcess, seconds: float) -> None:
    w.pause(node)
    try:
        time.sleep(seconds)
    finally:
        w.resume(node)


def pause_owner(w: World, p: dict) -> None:
    _pause(w, w.owner(), p["seconds"])


def pause_replica(w: World, p: dict) -> None:
    _pause(w, w.replicas()[p["which"]], p["seconds"])


def snapshot_then_fault(w: World, p: dict) -> None:
    """A copy killed, the backlog grown behind its back, the copy restarted, and while it
    catches up (by snapshot where its position is out of the owner's reach) a second
    fault."""
    catching = w.owner() if p["behind"] == "owner" else w.replicas()[p["which"]]
    _kill_and_restart(w, [catching], {"down": 0.0, "restart": False})
    w.load_backlog(p["backlog"])
    snapshots = _snapshots(catching)
    w.restart(catching)
    time.sleep(p["after"])
    st = w.state()
    w.note(f"{catching.name} catching up: in sync {st['in_sync']}, lag {st.get('lag')}, "
           f"snapshots begun {_snapshots(catching) - snapshots}")
    second = p["second"]
    if second == "kill_owner":
        _kill_and_restart(w, [w.owner()], {"down": 1.0})
    elif second == "kill_catching_up":
        _kill_and_restart(w, [catching], {"down": 0.5})
    elif second == "kill_other_replica":
        other = next(n for n in w.replicas() if n is not catching)
        _kill_and_restart(w, [other], {"down": 0.5})
    elif second == "pause_owner":
        _pause(w, w.owner(), FAILOVER_TIMEOUT * 2)
    elif second == "crash_all":
        crash_all(w, {"order": [2, 1, 0], "gap": 0.5})


def _snapshots(node: NodeProcess) -> int:
    return node.log_text().count(f"vhost '{VHOST}': loading a snapshot")


def move(w: World, p: dict) -> None:
    """The vhost moved to another in-sync copy while the live queue's consumer consumes."""
    st = w.wait_all_in_sync()
    target = w.replicas()[p["which"]]
    code, body = w.move(target)
    if code == 200:
        assert isinstance(body, dict) and body["owner"] == target.name, body
        assert body["epoch"] > st["epoch"], (st, body)
    else:  # refused (a copy fell out of sync meanwhile): a refusal, not a fault
        assert code in (400, 412), (code, body)


def forget_replica(w: World, p: dict) -> None:
    """A replica killed, forgotten while down, and a new node joined in its place."""
    old = w.replicas()[p["which"]]
    w.kill(old)
    via = w.live_nodes()
    w.c.wait_until(lambda: w.c.http(via[0], "DELETE", f"/api/cluster/nodes/"
                                    f"{quote(old.name, safe='')}")[0] in (204, 404),
                   timeout=60, what=f"forget {old.name}")
    w.forgotten.append(old)
    w.note(f"forgot {old.name}")
    i = w.c.nodes.index(old)
    name = f"n{w.next_name}@localhost"
    w.next_name += 1
    placement = w.lab.placement(i) if w.lab is not None else {}
    new = NodeProcess(w.c.base / name.split("@")[0], name=name, **placement,
                      **{**old.settings, "cluster_secret": SECRET})
    code, body = w.c.http(via[0], "POST", "/api/cluster/nodes",
                          {"raft_address": new.raft_address})
    assert code == 201, (code, body)
    new.settings["peers"] = ",".join([n.raft_address for n in w.c.nodes if n is not old]
                                     + [new.raft_address])
    w.replace_nodes(old, new)
    new.start(90)
    w.note(f"{name} joined in place of {old.name}")
    w.c.wait_until(lambda: name in w.state()["replicas"], timeout=60,
                   what=f"{name} a replica of {VHOST}")


def _cut_for(w: World, node: NodeProcess, seconds: float, one_way: str | None = None) -> None:
    w.partition(node, one_way)
    try:
        time.sleep(seconds)
        try:
            st = vhost_state(w.c, VHOST, via=w.live_nodes())
            w.note(f"during the cut: owner {st['owner']} epoch {st['epoch']} in sync "
                   f"{st['in_sync']}")
        except LookupError as e:
            w.note(f"during the cut: {e}")
    finally:
        w.heal()


def _owner_on(w: World, leading: bool) -> NodeProcess:
    """Make the owner the Raft leader (or not) by a move, where the copies allow it."""
    w.wait_all_in_sync()
    owner, leader = w.owner(), w.leader()
    if leader is None or (owner is leader) == leading:
        return owner
    target = leader if leading else next(n for n in w.replicas() if n is not leader)
    code, _ = w.move(target)
    return w.owner() if code != 200 else target


def cut_owner_leading(w: World, p: dict) -> None:
    owner = _owner_on(w, leading=True)
    _cut_for(w, owner, p["seconds"])


def cut_owner_following(w: World, p: dict) -> None:
    owner = _owner_on(w, leading=False)
    _cut_for(w, owner, p["seconds"])


def cut_replica(w: World, p: dict) -> None:
    _cut_for(w, w.replicas()[p["which"]], p["seconds"])


def cut_one_way(w: World, p: dict) -> None:
    node = w.owner() if p["who"] == "owner" else w.replicas()[0]
    _cut_for(w, node, p["seconds"], "in" if p["deaf"] else "out")


NEMESIS_STEPS: dict[str, Callable[[World, dict], None]] = {
    "kill_owner": kill_owner, "kill_replica": kill_replica, "kill_leader": kill_leader,
    "kill_two": kill_two, "crash_all": crash_all, "pause_owner": pause_owner,
    "pause_replica": pause_replica, "snapshot_then_fault": snapshot_then_fault,
    "move": move, "forget_replica": forget_replica,
    "cut_owner_leading": cut_owner_leading, "cut_owner_following": cut_owner_following,
    "cut_replica": cut_replica, "cut_one_way": cut_one_way,
}
assert set(NEMESIS_STEPS) == set(NEMESES)


# =========================================================================================
# after every schedule
# =========================================================================================
def queue_depth(w: World, node: NodeProcess, queue: str) -> int:
    """The queue's message count as `node` serves it to a client (a passive queue.declare,
    which answers the true count even while the queue is still being recovered), once two
    reads a second apart agree."""
    def read() -> int | None:
        try:
            conn = pika.BlockingConnection(amqp_params(node, VHOST, **w.cred))
        except pika.exceptions.AMQPError:  # still taking over
            return None
        try:
            return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
        finally:
            try:
                conn.close()
            except Exception:  # closed by the broker
                pass
    last = read()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = read()
        if now is not None and now == last:
            return now
        last = now
    raise AssertionError(f"{queue} on {node.name} never settled (last {last})")


def verify_copies(w: World) -> dict:
    c = w.c
    # asked of the owner, and again while a node just healed has not relinked (it refuses
    # with 400 "unavailable" until its Raft link to the owner is back)
    deadline = time.monotonic() + 30
    while True:
        code, report = c.http(w.owner(), "POST", vhost_path(VHOST) + "/verify", {},
                              timeout=600)
        if code != 400 or "unavailable" not in str(report) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert code == 200 and isinstance(report, dict), (code, report)
    w.note(f"verify: agree {report['agree']} at {report.get('position')}: "
           + ", ".join(f"{r['node']} {r.get('digest', '')[:12]} {r['agree']}"
                       for r in report["copies"]))
    assert len(report["copies"]) == len(c.nodes), report
    assert report["agree"] is True, (f"the copies of {VHOST} disagree: {report}\n"
                                     + log_tails(c, 30))
    return report


@dataclass
class Result:
    seed: int | None
    schedule: list[str]
    confirmed: dict[str, int]
    consumed: dict[str, int]
    duplicates: dict[str, int]
    depths: dict[str, int]
    epoch: int
    seconds: float
    events: list[str]


def settle_and_check(w: World, seed: int | None = None,
                     schedule: Sequence[Step] = ()) -> Result:
    """Heal, then: one owner and epoch everywhere, every digest agrees, every copy made
    owner in turn serves the same depth, and every confirmed id is consumed."""
    c = w.c
    started = time.monotonic()
    w.heal_all()
    st = w.wait_all_in_sync(timeout=180)
    w.progress("after the heal", more=50)
    consumed = w.stop_clients()
    # no vhost split between owners: every node names the same owner and epoch
    for n in c.nodes:
        wait_vhost(c, VHOST, lambda s: (s["owner"], s["epoch"]) == (st["owner"], st["epoch"]),
                   via=[n], timeout=60, what=f"{n.name} agreeing on the owner and epoch")
    st = w.wait_all_in_sync(timeout=120)
    verify_copies(w)
    # each copy in turn made owner: the same depth everywhere
    depths: dict[str, dict[str, int]] = {}
    order = sorted(c.nodes, key=lambda n: (n.name == st["owner"], n.name))
    for node in order:
        if w.owner() is not node:
            w.wait_all_in_sync()
            code, body = w.move(node)
            assert code == 200, (f"moving {VHOST} to {node.name}: {code} {body}\n"
                                 + log_tails(c, 30))
        wait_vhost(c, VHOST, lambda s, node=node: s["owner"] == node.name and s["available"],
                   via=[node], timeout=60, what=f"{node.name} serving {VHOST}")
        depths[node.name] = {q: queue_depth(w, node, q) for q in (BACKLOG, LIVE)}
        w.note(f"owner {node.name}: depths {depths[node.name]}")
    assert len({tuple(sorted(d.items())) for d in depths.values()}) == 1, \
        f"the copies serve different depths: {depths}\n" + log_tails(c, 30)
    # and now everything is consumed
    rest = {q: drain(c.nodes, VHOST, q, **w.cred, timeout=300) for q in (BACKLOG, LIVE)}
    served = next(iter(depths.values()))
    for q in (BACKLOG, LIVE):
        got = sum(rest[q].counts.values())
        assert got == served[q], f"{q}: drained {got} messages, its depth was {served[q]}"
    consumed.merge(rest[LIVE])
    what = f"seed {seed}" if seed is not None else "fixed schedule"
    assert_confirmed_present(w.confirmed(BACKLOG), rest[BACKLOG], c, f"{what}: {BACKLOG}")
    assert_confirmed_present(w.confirmed(LIVE), consumed, c, f"{what}: {LIVE}")
    final = w.state()
    result = Result(
        seed=seed, schedule=[str(s) for s in schedule],
        confirmed={BACKLOG: len(w.confirmed(BACKLOG)), LIVE: len(w.confirmed(LIVE))},
        consumed={BACKLOG: len(rest[BACKLOG].counts), LIVE: len(consumed.counts)},
        duplicates={BACKLOG: len(rest[BACKLOG].duplicates), LIVE: len(consumed.duplicates)},
        depths=served, epoch=final["epoch"], seconds=round(time.monotonic() - started, 1),
        events=w.events)
    log.warning("nemesis: %s passed: confirmed %s, consumed %s, duplicates %s, epoch %s",
                what, result.confirmed, result.consumed, result.duplicates, result.epoch)
    return result


# =========================================================================================
# the soak
# =========================================================================================
def run_seed(base: Path, seed: int, steps: int, lab: Any) -> Result:
    """One schedule on a fresh cluster (in the lab's namespaces when there is a lab)."""
    from tests.cluster.conftest import netns_cluster
    schedule = generate(seed, steps, partitions=lab is not None)
    log.warning("nemesis: %s", describe(seed, schedule))
    if lab is not None:
        with netns_cluster(lab, base, **SETTINGS) as c:
            w = World(c, lab).setup(backlog=10000)
            w.run(schedule)
            return settle_and_check(w, seed, schedule)
    c = Cluster(base, **SETTINGS)
    try:
        c.start()
        w = World(c).setup(backlog=10000)
        w.run(schedule)
        return settle_and_check(w, seed, schedule)
    finally:
        c.stop()


def soak(seconds: float, seed: int, steps: int, out: Path | None) -> int:
    from tests.cluster import harness, netns
    reason = netns.unavailable_reason()
    if reason:
        print(f"partitions cannot be made here ({reason}): the soak needs them", flush=True)
        return 2
    deadline = time.monotonic() + seconds
    results: list[dict] = []
    failures = 0
    k = 0
    while time.monotonic() < deadline:
        s = seed + k
        k += 1
        base = Path(tempfile.mkdtemp(prefix=f"nemesis-{s}-"))
        lab = netns.NetnsLab(3)
        t = time.monotonic()
        entry: dict[str, Any] = {"seed": s,
                                 "schedule": [str(x) for x in generate(s, steps)]}
        try:
            lab.setup()
            r = run_seed(base, s, steps, lab)
            entry.update(ok=True, **{k2: v for k2, v in asdict(r).items()
                                     if k2 not in ("seed", "schedule")})
            shutil.rmtree(base, ignore_errors=True)
        except BaseException as e:
            failures += 1
            entry.update(ok=False, error=f"{type(e).__name__}: {e}"[:20000],
                         data=str(base))
            log.error("nemesis: seed %d FAILED (data and logs kept in %s): %s", s, base, e)
            if isinstance(e, KeyboardInterrupt):
                raise
        finally:
            harness.stop_all()
            lab.teardown()
        entry["wall_seconds"] = round(time.monotonic() - t, 1)
        results.append(entry)
        print(json.dumps(entry), flush=True)
        if out is not None:
            out.write_text(json.dumps(results, indent=1))
    ok = sum(1 for r in results if r["ok"])
    confirmed = sum(sum(r.get("confirmed", {}).values()) for r in results)
    print(f"SOAK SUMMARY: {len(results)} schedules, {ok} passed, {failures} failed; "
          f"{confirmed} confirmed messages checked in the passing ones; seeds {seed}.."
          f"{seed + k - 1}", flush=True)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tests.cluster.nemesis",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--soak", type=float, metavar="SECONDS", required=True,
                    help="run schedules for this long (an hour or more before a release)")
    ap.add_argument("--seed", type=int, default=None, help="first seed (default: random)")
    ap.add_argument("--steps", type=int, default=10, help="steps per schedule")
    ap.add_argument("--results", type=Path, default=None, help="write results as JSON here")
    ap.add_argument("--print", dest="print_only", action="store_true",
                    help="only print the schedule of --seed")
    a = ap.parse_args(argv)
    seed = a.seed if a.seed is not None else random.randrange(1_000_000)
    if a.print_only:
        print(describe(seed, generate(seed, a.steps)))
        return 0
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(f"nemesis soak: {a.soak:.0f} s from seed {seed}, {a.steps} steps a schedule",
          flush=True)
    return soak(a.soak, seed, a.steps, a.results)


if __name__ == "__main__":
    sys.exit(main())
