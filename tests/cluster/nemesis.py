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
- a replica killed, forgotten while down (`forget_cluster_node`) and replaced by a new node;
- on a sharded vhost (`World(shards=3)`, `generate(..., shards=3)`): every step aims at one
  shard (its owner, its replicas, its move), and a rebalance runs under load.

While a schedule runs, publishers with confirms send to a backlog queue (never consumed until
the end) and to a live queue that a background consumer drains throughout.  After it, every
fault is healed and `settle_and_check` asserts: every node agrees on one owner and epoch;
every copy's digest agrees (`POST /api/cluster/vhosts/{vhost}/verify`); each copy in turn
is made owner and serves the same depth; and every confirmed id is consumed, exactly or
duplicated, never missing.  On a sharded vhost each shard has a backlog and a live queue,
publishers connect to nodes that do not own the queue's shard (their publishes cross a queue
link), each live queue's consumer to yet another node; the checks run for every shard and
every queue, and every node's own Raft view (`/api/cluster-status`) must name the same owner
and epoch per shard.

`python3 -m tests.cluster.nemesis --soak SECONDS --seed N [--shards 3]` runs schedule after schedule (one
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
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pika
import pika.exceptions

from cluster import shards as shard_keys
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
# on a sharded vhost: a rebalance under load too; no membership change (a forgotten node
# owns shards of its own, a schedule of its own to write)
SHARD_NEMESES: dict[str, int] = {"rebalance": 2}
NOT_SHARDED = {"forget_replica"}


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
    elif nemesis in ("move", "rebalance"):
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


def generate(seed: int, steps: int, partitions: bool = True, shards: int = 1) -> list[Step]:
    """The schedule of `seed`: a pure function of its arguments.  On a sharded vhost each
    step also names the shard it aims at (drawn last: a one-shard schedule is unchanged)."""
    rng = random.Random(seed)
    table = NEMESES if shards == 1 else {
        **{n: w for n, w in NEMESES.items() if n not in NOT_SHARDED}, **SHARD_NEMESES}
    names = [n for n in table if partitions or n not in PARTITIONS]
    weights = [table[n] for n in names]
    out: list[Step] = []
    forgot = False
    while len(out) < steps:
        nemesis = rng.choices(names, weights)[0]
        if nemesis == "forget_replica":
            if forgot:  # membership changes are slow: one per schedule
                continue
            forgot = True
        params = _params(nemesis, rng)
        if shards > 1:
            params["shard"] = rng.randrange(shards)
        out.append(Step(nemesis, params))
    return out


def describe(seed: int, schedule: Sequence[Step]) -> str:
    return f"seed {seed}: " + "; ".join(f"{i + 1}. {s}" for i, s in enumerate(schedule))


# =========================================================================================
# the world a schedule runs in
# =========================================================================================
class World:
    """A cluster with a replicated vhost, its publishers and consumers, and what the faults
    have done to it (down, paused, cut off).  With `shards` > 1 the vhost is split into
    that many shards, each with a backlog queue `q{k}` and a live queue `live{k}`; the
    step running aims at shard `focus` (its `owner()`, `replicas()`, `state()`)."""

    def __init__(self, cluster: Cluster, lab: Any = None, *, rate: float = 150.0,
                 shards: int = 1) -> None:
        self.c = cluster
        self.lab = lab
        self.rate = rate
        self.shards = shards
        self.focus = 0
        self.cred: dict[str, Any] = {"user": cluster.user, "password": cluster.password}
        self.paused: set[str] = set()
        self.cut: set[str] = set()
        self.extra: list[Publisher] = []     # backlog loaders: their confirms count too
        self.forgotten: list[NodeProcess] = []
        self.events: list[str] = []
        self.groups: list[Publishers] = []   # per shard: the backlog queue's publishers
        self.lives: list[Publisher] = []     # per shard: the live queue's publisher
        self.consumers: list[BackgroundConsumer] = []  # per shard: the live queue's
        self.next_name = len(cluster.nodes) + 1

    @property
    def sharded(self) -> bool:
        return self.shards > 1

    def backlog_queue(self, shard: int) -> str:
        return f"{BACKLOG}{shard}" if self.sharded else BACKLOG

    def live_queue(self, shard: int) -> str:
        return f"{LIVE}{shard}" if self.sharded else LIVE

    def queues(self) -> list[str]:
        return [q for k in range(self.shards)
                for q in (self.backlog_queue(k), self.live_queue(k))]

    # for the one-shard tests: shard 0's clients
    @property
    def pubs(self) -> Publishers | None:
        return self.groups[0] if self.groups else None

    @property
    def live(self) -> Publisher | None:
        return self.lives[0] if self.lives else None

    @property
    def consumer(self) -> BackgroundConsumer | None:
        return self.consumers[0] if self.consumers else None

    # ------------------------------------------------------------------ set up
    def setup(self, backlog: int = 0, body_size: int = 1024) -> "World":
        c = self.c
        c.wait_until(lambda: all(n["running"] for n in c.status(c.nodes[0])["nodes"]),
                     timeout=60, what="all Raft links")
        if self.sharded:
            self._create_sharded()
        else:
            create_vhost(c, VHOST, c.nodes[0], 3, queues=(BACKLOG, LIVE))
        self.wait_all_in_sync(timeout=90)
        for k in range(self.shards):
            self.focus = k
            if backlog:
                self.load_backlog(backlog // self.shards, body_size)
        self.focus = 0
        for k in range(self.shards):
            # clients start on the nodes that do not own the queue's shard: the publishes
            # and deliveries of a sharded vhost cross a queue link
            nodes = self._others_first(k)
            if self.sharded:
                group = Publishers(nodes, VHOST, self.backlog_queue(k), count=len(nodes) - 1,
                                   prefix=f"s{k}p", confirm_timeout=3,
                                   rate=self.rate / (len(nodes) - 1), **self.cred)
            else:
                group = Publishers(nodes, VHOST, BACKLOG, confirm_timeout=3, rate=self.rate,
                                   **self.cred)
            self.groups.append(group.start())
            live = Publisher(nodes, VHOST, self.live_queue(k), name=f"live{k}",
                             confirm_timeout=3, rate=self.rate / 2 / self.shards,
                             start=1, **self.cred)
            live.start()
            self.lives.append(live)
            # the consumer on the first of them, the live publisher on the second
            consumer = BackgroundConsumer(nodes, VHOST, self.live_queue(k), **self.cred)
            consumer.start()
            self.consumers.append(consumer)
        self.progress("before the first fault", more=100, timeout=60)
        return self

    def _others_first(self, shard: int) -> list[NodeProcess]:
        """The nodes, from the one after the shard's owner round to its owner (one shard:
        the nodes in their order, as before)."""
        nodes = list(self.c.nodes)
        if not self.sharded:
            return nodes
        i = nodes.index(self.c.by_name(self.state(shard)["owner"]))
        return nodes[i + 1:] + nodes[:i + 1]

    def _create_sharded(self) -> None:
        """The vhost with `shards` shards of 3 copies each, a backlog and a live queue on
        every shard (`balanced` placement, checked), all known on every node."""
        c, n1 = self.c, self.c.nodes[0]
        code, body = c.http(n1, "PUT", vhost_path(VHOST), {"shards": self.shards,
                                                          "replicas": 3})
        assert code == 201, (code, body)
        code, body = c.http(n1, "PUT", f"/api/permissions/{quote(VHOST, safe='')}/{c.user}",
                            {"configure": ".*", "write": ".*", "read": ".*"})
        assert code in (201, 204), (code, body)
        for n in c.nodes:
            c.wait_until(lambda n=n: len([s for s in self._local_view(n) if s[0]])
                         == self.shards, timeout=30, what=f"the shards known on {n.name}")
        balanced = {"x-queue-leader-locator": "balanced"}
        # `balanced` puts each on the shard with the fewest queues: in this order, the
        # backlog queues on shards 0, 1, 2..., then the live queues likewise
        for q in [self.backlog_queue(k) for k in range(self.shards)] + \
                 [self.live_queue(k) for k in range(self.shards)]:
            c.wait_until(lambda q=q: c.http(n1, "PUT", f"/api/queues/{quote(VHOST, safe='')}/"
                                            f"{q}", {"durable": True, "arguments": balanced}
                                            )[0] in (201, 204), timeout=30, what=f"declare {q}")
        for n in c.nodes:
            for k in range(self.shards):
                for q in (self.backlog_queue(k), self.live_queue(k)):
                    got: list = []
                    c.wait_until(lambda n=n, q=q, got=got: got.append(c.http(
                        n, "GET", f"/api/queues/{quote(VHOST, safe='')}/{q}"))
                        or got[-1][0] == 200, timeout=30, what=f"{q} known on {n.name}")
                    assert got[-1][1]["shard"] == k, (q, got[-1][1])

    def load_backlog(self, n: int, body_size: int = 1024) -> None:
        """`n` more confirmed messages of `body_size` bytes in the backlog queue (of the
        shard in focus), fast."""
        p = Publisher(self.live_nodes(), VHOST, self.backlog_queue(self.focus),
                      name=f"backlog{len(self.extra)}", window=500, rate=0.0,
                      confirm_timeout=10, body_size=body_size, **self.cred)
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
        self.note(f"backlog: {p.confirmed_count()} x {body_size} B confirmed in "
                  f"{p.queue}")

    # ------------------------------------------------------------------ reading the state
    def note(self, what: str) -> None:
        log.warning("nemesis: %s", what)
        self.events.append(f"{_clock(time.time())} {what}")

    def explain(self, queue: str, missing: set[str]) -> str:
        """For a failure: who confirmed each missing id and when, and where its publisher
        was connected meanwhile (wall clock, as the nodes' logs)."""
        wall = time.time() - time.monotonic()
        out = []
        for p in self.publishers():
            if p.queue != queue:
                continue
            for conf in p.snapshot("confirms"):
                if conf.id in missing:
                    out.append(f"{conf.id}: sent {_clock(conf.sent + wall)}, confirmed "
                               f"{_clock(conf.confirmed + wall)} by {conf.node}")
            if any(m.startswith(p.tag + "-") for m in missing):
                out.append(f"{p.name} connected: " + ", ".join(
                    f"{_clock(t + wall)} {n}" for t, n in p.snapshot("connects")))
        return "\n".join(out + ["events:"] + self.events)

    def unit(self, shard: int | None = None) -> str:
        return shard_keys.unit_key(VHOST, self.focus if shard is None else shard)

    def live_nodes(self) -> list[NodeProcess]:
        """Nodes that answer and see the majority's view."""
        return [n for n in self.c.nodes
                if n.running and n.name not in self.paused and n.name not in self.cut]

    def state(self, shard: int | None = None,
              via: Sequence[NodeProcess] | None = None) -> dict:
        """The placement of the shard in focus (or `shard`), from its owner where it
        answers (its lag, its in-sync set)."""
        k = self.focus if shard is None else shard
        via = via or self.live_nodes() or None
        if not self.sharded:
            return vhost_state(self.c, VHOST, via=via)
        last: object = None
        for node in via or [n for n in self.c.nodes if n.running]:
            try:
                code, body = self.c.http(node, "GET", vhost_path(VHOST) + f"?shard={k}",
                                         timeout=3.0)
            except OSError as e:
                last = e
                continue
            if code == 200 and isinstance(body, dict):
                return body
            last = (node.name, code, body)
        raise LookupError(f"no node answered for {shard_keys.label(self.unit(k))}: {last}")

    def wait_state(self, cond: Callable[[dict], bool], *, shard: int | None = None,
                   via: Sequence[NodeProcess] | None = None, timeout: float = 30.0,
                   what: str = "vhost state") -> dict:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                st = self.state(shard, via)
                last = st
                if cond(st):
                    return st
            except LookupError as e:
                last = e
            time.sleep(0.1)
        k = self.focus if shard is None else shard
        raise AssertionError(f"{shard_keys.label(self.unit(k))}: {what}: not reached in "
                             f"{timeout}s; last state {last}\n" + log_tails(self.c, 25))

    def owner(self, shard: int | None = None) -> NodeProcess:
        return self.c.by_name(self.state(shard)["owner"])

    def replicas(self, shard: int | None = None) -> list[NodeProcess]:
        """The other copies, ordered by name (a step's `which` picks one)."""
        owner = self.state(shard)["owner"]
        return sorted((n for n in self.c.nodes if n.name != owner), key=lambda n: n.name)

    def leader(self) -> NodeProcess | None:
        for n in self.live_nodes():
            try:
                return self.c.leader(n)
            except Exception:  # restarting
                continue
        return None

    def wait_all_in_sync(self, timeout: float = 120.0) -> dict:
        """Every shard with both replicas in sync; the state of the shard in focus."""
        states = [self.wait_state(lambda s: len(s.get("in_sync", [])) >= 2, shard=k,
                                  via=self.live_nodes(), timeout=timeout,
                                  what="2 replicas in sync")
                  for k in range(self.shards)]
        return states[self.focus]

    def progress(self, what: str, more: int = 20, timeout: float = 120.0) -> None:
        """The vhost serves again, every shard of it: `more` further confirms (liveness,
        not speed), shared between the shards."""
        for k, group in enumerate(self.groups):
            group.wait_confirms(max(1, more // self.shards), timeout=timeout,
                                what=f"{what}" + (f" (shard {k})" if self.sharded else ""))

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

    def views(self) -> set[tuple]:
        """(owner, epoch) of the vhost as each live node sees it; on a sharded vhost, each
        node's own Raft view of every shard's."""
        if self.sharded:
            return {self._local_view(n) for n in self.live_nodes()}
        return {(s["owner"], s["epoch"]) for n in self.live_nodes()
                for s in [vhost_state(self.c, VHOST, via=[n])]}

    def _local_view(self, node: NodeProcess) -> tuple[tuple[str, int], ...]:
        """((owner, epoch) per shard) as `node`'s own Raft records say (not relayed)."""
        st = self.c.status(node)["vhosts"].get(VHOST) or {"shards": []}
        return tuple((s["owner"], s["epoch"]) for s in st["shards"])

    def move(self, target: NodeProcess, timeout: float = 180,
             shard: int | None = None) -> tuple[int, object]:
        k = self.focus if shard is None else shard
        via = self.live_nodes()[0]
        t = time.monotonic()
        code, body = self.c.http(via, "POST", vhost_path(VHOST) + "/move",
                                 {"node": target.name, **({"shard": k} if self.sharded
                                                          else {})}, timeout=timeout)
        what = f" shard {k}" if self.sharded else ""
        self.note(f"move{what} to {target.name}: {code} {body} in "
                  f"{time.monotonic() - t:.2f}s")
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
        for consumer in self.consumers:
            nodes = consumer.drainer.nodes
            if old in nodes:
                nodes[nodes.index(old)] = new

    def publishers(self) -> list[Publisher]:
        return [*(p for g in self.groups for p in g.all), *self.lives, *self.extra]

    # ------------------------------------------------------------------ running
    def run(self, schedule: Sequence[Step]) -> None:
        for i, step in enumerate(schedule):
            self.focus = step.params.get("shard", 0)
            self.note(f"step {i + 1}/{len(schedule)}: {step}")
            if step.params.get("sync_first"):
                self.wait_all_in_sync()
            time.sleep(step.params.get("delay", 0.0))
            NEMESIS_STEPS[step.nemesis](self, step.params)
            self.progress(f"step {i + 1} ({step})")
        self.focus = 0

    def stop_clients(self) -> dict[str, Drained]:
        """Stop publishing and consuming; what each live queue's consumer got."""
        for g in self.groups:
            for p in g.all:
                p.request_stop()
        for p in self.lives:
            p.request_stop()
        for g in self.groups:
            g.stop()
        for p in self.lives:
            p.stop()
        out = {}
        for c in self.consumers:
            try:
                out[c.drainer.queue] = c.stop()
            except RuntimeError:
                # where it waits (a broker call that never answers): said before failing
                frame = sys._current_frames().get(c.ident or 0)
                self.note(f"the consumer of {c.drainer.queue} did not stop; it waits in:\n"
                          + "".join(traceback.format_stack(frame) if frame else ["?"]))
                raise
        return out

    def confirmed(self, queue: str) -> set[str]:
        """Every id confirmed to a publisher of `queue`."""
        return set().union(*(p.snapshot("confirmed") for p in self.publishers()
                             if p.queue == queue))


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f",{int(t % 1 * 1000):03d}"


# =========================================================================================
# the nemeses (each undoes its fault before it returns)
# =========================================================================================
def _kill_and_restart(w: World, victims: list[NodeProcess], p: dict) -> None:
    befores = [w.state(k) for k in range(w.shards)]
    for v in victims:
        w.kill(v)
    survivors = [n for n in w.c.nodes if n.running]
    for k, before in enumerate(befores):  # every shard a victim owned
        if not any(v.name == before["owner"] for v in victims):
            continue
        # a failover can happen only with a Raft majority and an in-sync survivor
        if len(survivors) >= 2 and any(s.name in before["in_sync"] for s in survivors):
            st = w.wait_state(lambda s, b=before: s["epoch"] > b["epoch"], shard=k,
                              via=survivors, timeout=60, what="a failover")
            w.note(f"failover{f' of shard {k}' if w.sharded else ''}: {before['owner']} -> "
                   f"{st['owner']}, epoch {before['epoch']} -> {st['epoch']}")
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
    befores = [w.state(k) for k in range(w.shards)]
    for n in w.c.nodes:
        n.kill()
    w.note("kill -9 all (" + "; ".join(
        f"{'shard %d ' % k if w.sharded else ''}owner {b['owner']}, epoch {b['epoch']}, "
        f"in sync {b['in_sync']}" for k, b in enumerate(befores)) + ")")
    for k in p["order"]:
        w.restart(owner_first[k], wait=False)
        time.sleep(p["gap"])
    for n in w.c.nodes:
        n.wait(90)
    for k, before in enumerate(befores):
        st = w.wait_state(lambda s: s["available"], shard=k, timeout=90,
                          what="served after the whole cluster restarted")
        w.note(f"after the restart: {f'shard {k} ' if w.sharded else ''}owner {st['owner']} "
               f"epoch {st['epoch']}")
        # every owner term is a new epoch: whoever serves after a crash serves a later one
        assert st["epoch"] > before["epoch"], (k, before, st)


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
    snapshots = _snapshots(w, catching)
    w.restart(catching)
    time.sleep(p["after"])
    st = w.state()
    w.note(f"{catching.name} catching up: in sync {st['in_sync']}, lag {st.get('lag')}, "
           f"snapshots begun {_snapshots(w, catching) - snapshots}")
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


def _snapshots(w: World, node: NodeProcess) -> int:
    return node.log_text().count(f"{shard_keys.label(w.unit())}: loading a snapshot")


def move(w: World, p: dict) -> None:
    """The vhost (the shard in focus) moved to another in-sync copy while the publishers
    publish and the live queues' consumers consume."""
    st = w.wait_all_in_sync()
    target = w.replicas()[p["which"]]
    code, body = w.move(target)
    if code == 200:
        assert isinstance(body, dict) and body["owner"] == target.name, body
        assert body["epoch"] > st["epoch"], (st, body)
    else:  # refused (a copy fell out of sync meanwhile): a refusal, not a fault
        assert code in (400, 412), (code, body)


def rebalance(w: World, p: dict) -> None:
    """A sharded vhost's shard in focus piled on the owner of another shard, then the
    vhost rebalanced (each step a live move) while the publishers publish."""
    w.wait_all_in_sync()
    others = [k for k in range(w.shards) if k != w.focus]
    pile = w.owner(others[p["which"] % len(others)])
    if w.owner() is not pile:
        code, body = w.move(pile)
        if code != 200:  # refused (a copy fell out of sync meanwhile): not a fault
            assert code in (400, 412), (code, body)
    t = time.monotonic()
    code, body = w.c.http(w.live_nodes()[-1], "POST", vhost_path(VHOST) + "/rebalance", {},
                          timeout=600)
    w.note(f"rebalance: {code} {body} in {time.monotonic() - t:.2f}s")
    if code != 200:  # a move refused midway (a copy out of sync): the moves made stay
        assert code in (400, 409, 412), (code, body)
        return
    assert isinstance(body, dict) and isinstance(body.get("moves"), list), body
    owners = [w.state(k)["owner"] for k in range(w.shards)]
    counts = [owners.count(n.name) for n in w.c.nodes]
    assert max(counts) - min(counts) <= 1, (f"not spread after the rebalance: {owners}", body)


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
            st = w.state(via=w.live_nodes())
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
    "cut_replica": cut_replica, "cut_one_way": cut_one_way, "rebalance": rebalance,
}
assert set(NEMESIS_STEPS) == set(NEMESES) | set(SHARD_NEMESES)


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


def verify_copies(w: World, shard: int | None = None) -> dict:
    """Every copy's digest of the shard in focus (or `shard`) at one offset: they agree."""
    c = w.c
    k = w.focus if shard is None else shard
    label = shard_keys.label(w.unit(k))
    # asked of the owner, and again while a node just healed has not relinked (it refuses
    # with 400 "unavailable" until its Raft link to the owner is back)
    deadline = time.monotonic() + 30
    while True:
        code, report = c.http(w.owner(k), "POST", vhost_path(VHOST) + "/verify",
                              {"shard": k} if w.sharded else {}, timeout=600)
        if code != 400 or "unavailable" not in str(report) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert code == 200 and isinstance(report, dict), (label, code, report)
    w.note(f"verify {label}: agree {report['agree']} at {report.get('position')}: "
           + ", ".join(f"{r['node']} {r.get('digest', '')[:12]} {r['agree']}"
                       for r in report["copies"]))
    assert len(report["copies"]) == len(c.nodes), report
    assert report["agree"] is True, (f"the copies of {label} disagree: {report}\n"
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
    epoch: int | list[int]
    seconds: float
    events: list[str]


# a rotation whose data changed while it ran is run again, at most this often in all
ROTATIONS = 3


def rotation_verdict(depths: dict[str, dict[str, int]], grown: Sequence[int]) -> str:
    """What one rotation (each copy in turn made owner of every shard, its depths read)
    says: "agree"; "differ", the depths differ on data that did not change; or "changed",
    they differ but some shard's store took records of its own while the rotation ran
    (`grown`: per shard, records beyond the one each takeover writes), so two owners read
    different data and nothing is shown.  That happens: a publish a node wrote into a queue
    link at the moment a cut began sits in TCP's retransmission queue, and after the heal
    it arrives when the backed-off retransmission fires (13 s later after a 7 s cut), long
    after the publishers stopped, at whichever copy owns its queue then."""
    if len({tuple(sorted(d.items())) for d in depths.values()}) == 1:
        return "agree"
    return "changed" if any(g > 0 for g in grown) else "differ"


def _offset(w: World, shard: int) -> int:
    """The offset of the last record the shard's owner numbered (its store's)."""
    st = w.wait_state(lambda s: isinstance(s.get("offset"), int), shard=shard, timeout=60,
                      what="the owner's offset")
    return int(st["offset"])


def _rotation(w: World) -> tuple[list[NodeProcess], dict[str, dict[str, int]], list[int]]:
    """Each copy in turn made the owner of every shard (the owner of shard 0 last), the
    depth of every queue as it serves it; and per shard the records its store took
    meanwhile beyond the one each takeover writes (the first record of its epoch)."""
    c = w.c
    first = w.state(0)["owner"]
    order = sorted(c.nodes, key=lambda n: (n.name == first, n.name))
    start = [_offset(w, k) for k in range(w.shards)]
    moves = [0] * w.shards
    depths: dict[str, dict[str, int]] = {}
    for node in order:
        for k in range(w.shards):
            if w.owner(k) is not node:
                w.wait_all_in_sync()
                code, body = w.move(node, shard=k)
                assert code == 200, (f"moving {shard_keys.label(w.unit(k))} to {node.name}: "
                                     f"{code} {body}\n" + log_tails(c, 30))
                moves[k] += 1
            w.wait_state(lambda s, node=node: s["owner"] == node.name and s["available"],
                         shard=k, via=[node], timeout=60, what=f"{node.name} serving it")
        depths[node.name] = {q: queue_depth(w, node, q) for q in w.queues()}
        rows = {q: c.http(node, "GET", f"/api/queues/{quote(VHOST, safe='')}/{q}")[1]
                for q in w.queues()}
        w.note(f"owner {node.name}: depths {depths[node.name]}; consumers, unacked: "
               + ", ".join(f"{q} {r.get('consumers')} {r.get('messages_unacknowledged')}"
                           for q, r in rows.items() if isinstance(r, dict)))
    grown = [_offset(w, k) - start[k] - moves[k] for k in range(w.shards)]
    return order, depths, grown


def settle_and_check(w: World, seed: int | None = None,
                     schedule: Sequence[Step] = ()) -> Result:
    """Heal, then, for every shard: one owner and epoch on every node, every digest
    agrees, every copy made owner in turn serves the same depth of every queue, and every
    confirmed id of every queue is consumed."""
    c = w.c
    started = time.monotonic()
    w.focus = 0
    w.heal_all()
    w.wait_all_in_sync(timeout=180)
    w.progress("after the heal", more=50)
    consumed = w.stop_clients()
    states = [w.wait_state(lambda s: len(s.get("in_sync", [])) >= 2, shard=k, timeout=120,
                           what="2 replicas in sync") for k in range(w.shards)]
    # no vhost (no shard) split between owners: every node names the same owner and epoch
    want = [(s["owner"], s["epoch"]) for s in states]
    for n in c.nodes:
        if w.sharded:  # each node's own Raft records, not an answer relayed to an owner
            c.wait_until(lambda n=n: list(w._local_view(n)) == want, timeout=60,
                         what=f"{n.name} agreeing on every shard's owner and epoch {want}")
            continue
        wait_vhost(c, VHOST, lambda s: (s["owner"], s["epoch"]) == want[0],
                   via=[n], timeout=60, what=f"{n.name} agreeing on the owner and epoch")
    w.wait_all_in_sync(timeout=120)
    for k in range(w.shards):
        verify_copies(w, k)
    # each copy in turn made the owner of every shard: the same depth of every queue, read
    # on the same data (a rotation during which a store took records of its own is run
    # again: see rotation_verdict)
    for attempt in range(1, ROTATIONS + 1):
        order, depths, grown = _rotation(w)
        verdict = rotation_verdict(depths, grown)
        if verdict != "changed":
            break
        w.note(f"rotation {attempt}: the depths differ, but shards took {grown} records "
               f"beyond their takeovers' while the owners were read (late publishes): "
               + ("again" if attempt < ROTATIONS else "giving up"))
    # different depths fail the schedule, after the drain below has said whether a confirmed
    # message is missing too
    differ = verdict != "agree"
    if differ:
        w.note(f"the copies serve different depths: {depths}")
    # and now everything is consumed, through the nodes that own none of it last
    last = order[-1]
    through = [n for n in c.nodes if n is not last] + [last]
    rest = {q: drain(through, VHOST, q, **w.cred, timeout=300) for q in w.queues()}
    served = depths[last.name]
    for q, d in consumed.items():
        d.merge(rest[q])
    what = f"seed {seed}" if seed is not None else "fixed schedule"
    for k in range(w.shards):
        for q, got in ((w.backlog_queue(k), rest), (w.live_queue(k), consumed)):
            missing = w.confirmed(q) - got[q].counts.keys()
            if missing:
                log.error("nemesis: %s: confirmed but missing from %s:\n%s", what, q,
                          w.explain(q, missing))
            assert_confirmed_present(w.confirmed(q), got[q], c, f"{what}: {q}")
    assert not differ, f"the copies serve different depths: {depths}\n" + log_tails(c, 30)
    for q in w.queues():
        drained = sum(rest[q].counts.values())
        assert drained == served[q], f"{q}: drained {drained} messages, its depth was {served[q]}"
    every = {q: (rest[q] if q in [w.backlog_queue(k) for k in range(w.shards)]
                 else consumed[q]) for q in w.queues()}
    finals = [w.state(k)["epoch"] for k in range(w.shards)]
    result = Result(
        seed=seed, schedule=[str(s) for s in schedule],
        confirmed={q: len(w.confirmed(q)) for q in w.queues()},
        consumed={q: len(every[q].counts) for q in w.queues()},
        duplicates={q: len(every[q].duplicates) for q in w.queues()},
        depths=served, epoch=finals if w.sharded else finals[0],
        seconds=round(time.monotonic() - started, 1), events=w.events)
    log.warning("nemesis: %s passed: confirmed %s, consumed %s, duplicates %s, epoch %s",
                what, result.confirmed, result.consumed, result.duplicates, result.epoch)
    return result


# =========================================================================================
# the soak
# =========================================================================================
def run_seed(base: Path, seed: int, steps: int, lab: Any, shards: int = 1) -> Result:
    """One schedule on a fresh cluster (in the lab's namespaces when there is a lab), on a
    vhost of `shards` shards."""
    from tests.cluster.conftest import netns_cluster
    schedule = generate(seed, steps, partitions=lab is not None, shards=shards)
    log.warning("nemesis: %s", describe(seed, schedule))
    if lab is not None:
        with netns_cluster(lab, base, **SETTINGS) as c:
            w = World(c, lab, shards=shards).setup(backlog=10000)
            w.run(schedule)
            return settle_and_check(w, seed, schedule)
    c = Cluster(base, **SETTINGS)
    try:
        c.start()
        w = World(c, shards=shards).setup(backlog=10000)
        w.run(schedule)
        return settle_and_check(w, seed, schedule)
    finally:
        c.stop()


def soak(seconds: float, seed: int, steps: int, out: Path | None, shards: int = 1) -> int:
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
        entry: dict[str, Any] = {"seed": s, "shards": shards, "schedule": [
            str(x) for x in generate(s, steps, shards=shards)]}
        try:
            lab.setup()
            r = run_seed(base, s, steps, lab, shards)
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
    ap.add_argument("--shards", type=int, default=1,
                    help="shards of the vhost the schedules run on (3: one per node)")
    ap.add_argument("--results", type=Path, default=None, help="write results as JSON here")
    ap.add_argument("--print", dest="print_only", action="store_true",
                    help="only print the schedule of --seed")
    a = ap.parse_args(argv)
    seed = a.seed if a.seed is not None else random.randrange(1_000_000)
    if a.print_only:
        print(describe(seed, generate(seed, a.steps, shards=a.shards)))
        return 0
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(f"nemesis soak: {a.soak:.0f} s from seed {seed}, {a.steps} steps a schedule, "
          f"{a.shards} shard(s)", flush=True)
    return soak(a.soak, seed, a.steps, a.results, a.shards)


if __name__ == "__main__":
    sys.exit(main())
