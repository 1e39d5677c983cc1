"""Replicated vhosts against RabbitMQ quorum queues, same run, same generator (a benchmark,
never collected by pytest).

Starts three WarrenMQ nodes from this checkout (fresh data dirs in a temp dir, as
tests/nodeproc.py does) and the three-node RabbitMQ anchor cluster
(``../shared/bench/anchors/rabbitmq-cluster.sh`` in a fresh temp base), then:

1. **S3** (run_scenarios.sh's S3 flags: persistent 1 KB, durable queue, confirms with 1000
   in flight, manual ack x100, prefetch 1000) on a WarrenMQ vhost with factor 3 (client on
   its owner), a WarrenMQ vhost with factor 1 (same cluster, same owner) and a RabbitMQ
   quorum queue (client on its leader), alternating f3 / f1 / quorum each round;
   confirmed msg/s medians and the ratios factor3/quorum and factor3/factor1.
2. **Failover**: a publisher with confirms at a steady rate (``-rate 2000``) plus a
   consumer, client on a node that survives; kill -9 of the vhost's owner (WarrenMQ) or
   of the quorum queue leader's node (RabbitMQ); the killed node is restarted and waited
   back in sync between rounds. WarrenMQ and RabbitMQ rounds alternate.
3. **Move pause** (WarrenMQ): 100,000 persistent 1 KB messages queued in the vhost (a
   backlog queue), a confirmed publisher + consumer running through the third node, POST
   /api/cluster/vhosts/{vhost}/move back and forth between two nodes; the API's pause_ms
   and the confirm gap the client saw.

How the gap is measured (the same way for both brokers): amqpbench does not reconnect,
and WarrenMQ closes every connection of a vhost that fails over or moves (a forwarded
connection's socket closes with the owner's).  So the client is a *chain* of amqpbench
processes (``-no-setup -drain 0s -tick TICK``): when one exits before the end (its
connection closed), the next one starts at once (retrying every 20 ms while the vhost is
unavailable), through the same surviving node.  Every process prints a tick line
(wall-clock time, cumulative confirms) every TICK; the ticks of all processes are merged
into one timeline.  ``gap_ms`` (+-TICK) is the event's stall: the longest interval between
two ticks that saw new confirms which ends after the event and began between 2 s before
it and the end of the event (+100 ms: a kill is instantaneous, a move ends when its POST
is answered), so a stall that begins seconds later for another reason (fsync on a busy
machine) is not counted; ``resume_ms`` = the tick that ended it minus the moment of the
kill (or of the move request): "confirms resumed X ms after the kill".  ``max_gap_ms`` is
the longest stall of the whole run from 2 s before the event (max_confirm_gap_ms's
meaning, any cause).  When one process lived through the stall (RabbitMQ: a client on a
follower keeps its connection) amqpbench's own exact ``max_confirm_gap_ms`` is reported
beside it (``exact_gap_ms``).  A reconnecting client pays the chain's restart (~10-30 ms
per attempt: exec + AMQP handshake), as any real client would.  The raw ticks around each
event are kept in the JSON.  The tick is 20 ms rather than the issue's 100 ms because
across a reconnect it is the resolution of the figure.  A WarrenMQ round also records
whether the killed owner was the Raft leader too (then the promotion waits for a Raft
election).  The move is asked of the owner's HTTP port (``relay_check`` records what a
non-owner answers).

usage (from the checkout; needs ../shared/bench/build.sh --anchors):
    python3 tests/bench/replication_bench.py [--rounds 10] [--duration 10]
        [--stages s3,failover,move] [--tick 20ms] [--rate 2000]
        [--backlog 100000] [--rabbit-base DIR]
    e.g. a smoke run: python3 tests/bench/replication_bench.py --rounds 2 --duration 3
env: BENCH_DIR (default ../shared/bench beside the checkout), BENCH_WORK (default
~/.cache/warren-bench; amqpbench in $BENCH_WORK/bin, results in $BENCH_WORK/results),
AMQPBENCH (the generator binary), RESULTS_DIR.
--rabbit-base DIR reuses a RabbitMQ anchor cluster already running with that base (and
leaves it running); without it a fresh one is started in a temp dir and stopped at the end
(refused if its ports 5861-5863 are taken).  Output: a table on stdout, every raw result
in RESULTS_DIR/replication-<UTC time>.json, node logs in RESULTS_DIR/replication-<UTC
time>-logs/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.nodeproc import NodeProcess, http_json  # noqa: E402

WORK = Path(os.environ.get("BENCH_WORK")
            or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "warren-bench")
BENCH_DIR = Path(os.environ.get("BENCH_DIR") or REPO.parent / "shared" / "bench")
AMQPBENCH = Path(os.environ.get("AMQPBENCH") or WORK / "bin" / "amqpbench")
RESULTS_DIR = Path(os.environ.get("RESULTS_DIR") or WORK / "results")
RMQ_BIN = Path("/usr/lib/rabbitmq/bin")
SECRET = "replication-bench-secret"

# run_scenarios.sh's S3
S3 = ["-producers", "1", "-consumers", "1", "-size", "1024", "-persistent", "-confirm", "1000",
      "-ack-every", "100", "-prefetch", "1000"]
TICK_RE = re.compile(r"^tick wall=([\d.]+) t=[\d.]+ sent=(\d+) confirmed=(\d+) received=(\d+)")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def busy_pct() -> float:
    """Machine CPU% over 1 s (100 per core)."""
    def snap() -> tuple[int, int]:
        v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        return sum(v), v[3] + v[4]
    t1, i1 = snap()
    time.sleep(1)
    t2, i2 = snap()
    tot = max(t2 - t1, 1)
    return (tot - (i2 - i1)) * 100 * (os.cpu_count() or 1) / tot


def wait_quiet(max_pct: float, timeout: float) -> float:
    """Wait until the machine is below max_pct busy (at most timeout s); returns the last
    reading."""
    deadline = time.monotonic() + timeout
    while True:
        b = busy_pct()
        if b <= max_pct or time.monotonic() > deadline:
            return round(b, 1)


def amqpbench(url: str, flags: list[str], timeout: float = 120) -> tuple[dict, str]:
    p = subprocess.run([str(AMQPBENCH), "-url", url, *flags], capture_output=True, text=True,
                       timeout=timeout)
    lines = p.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1]), p.stderr
    except (IndexError, ValueError):
        return {"errors": 1, "error_msgs": [f"rc={p.returncode} no result: {p.stderr[-300:]}"]}, \
            p.stderr


def other_cpu(r: dict) -> float | None:
    """CPU% of everything but the generator and the three nodes of the broker under test."""
    v = r.get("other_cpu_pct")
    if v is None:
        return None
    return round(v - sum((r.get("extra_cpu_pct") or {}).values()), 1)


def http(port: int, method: str, path: str, body: object = None,
         timeout: float = 30) -> tuple[int, Any]:
    return http_json(f"http://127.0.0.1:{port}", method, path, body, timeout=timeout)


def wait_until(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # a node may be restarting
            last = e
        time.sleep(every)
    raise TimeoutError(f"{what}: not reached in {timeout}s (last error: {last})")


# ------------------------------------------------------------------------------------------
# the brokers
# ------------------------------------------------------------------------------------------
class Warren:
    """Three WarrenMQ nodes from this checkout."""

    def __init__(self, base: Path) -> None:
        self.nodes = [NodeProcess(base / f"n{i}", name=f"n{i}@localhost",
                                  cluster_secret=SECRET, log_level="info")
                      for i in (1, 2, 3)]
        peers = ",".join(n.raft_address for n in self.nodes)
        for n in self.nodes:
            n.settings["peers"] = peers

    def start(self) -> None:
        for n in self.nodes:
            n.launch()
        for n in self.nodes:
            n.wait(90)
        wait_until(lambda: len(self.api("GET", "/api/cluster-status")[1]["nodes"]) == 3, 60,
                   "three WarrenMQ nodes in the cluster")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def node(self, name: str) -> NodeProcess:
        return next(n for n in self.nodes if n.name == name)

    def api(self, method: str, path: str, body: object = None, via: NodeProcess | None = None,
            timeout: float = 30) -> tuple[int, Any]:
        if via is None:
            via = next(n for n in self.nodes if n.running)
        return http(via.http_port, method, path, body, timeout)

    @staticmethod
    def url(node: NodeProcess, vhost: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{node.amqp_port}/{urllib.parse.quote(vhost, safe='')}"

    def create_vhost(self, vhost: str, owner: NodeProcess, copies: int) -> None:
        code, body = self.api("PUT", f"/api/cluster/vhosts/{vhost}",
                              {"owner": owner.name, "replicas": copies})
        assert code in (201, 204), (code, body)
        code, body = self.api("PUT", f"/api/permissions/{vhost}/guest",
                              {"configure": ".*", "write": ".*", "read": ".*"})
        assert code in (201, 204), (code, body)
        self.wait_in_sync(vhost, copies)

    def placement(self, vhost: str, via: NodeProcess | None = None) -> dict:
        code, body = self.api("GET", f"/api/cluster/vhosts/{vhost}", via=via, timeout=5)
        assert code == 200, (code, body)
        return body

    def wait_in_sync(self, vhost: str, copies: int, timeout: float = 120) -> dict:
        """Until every running node answers: owner available, copies-1 replicas in sync,
        no lag."""
        def ok() -> dict | None:
            p = self.placement(vhost)
            if not p.get("available") or len(p.get("in_sync", [])) < copies - 1:
                return None
            if any(v.get("records") for v in (p.get("lag") or {}).values()):
                return None
            return p
        return wait_until(ok, timeout, f"vhost {vhost} in sync with {copies} copies", 0.1)

    def owner(self, vhost: str) -> NodeProcess:
        return self.node(self.placement(vhost)["owner"])

    def pids(self) -> dict[str, int]:
        return {n.name.split("@")[0]: n.proc.pid for n in self.nodes if n.running and n.proc}

    def raft_leader(self) -> str | None:
        try:
            nodes = self.api("GET", "/api/cluster-status", timeout=5)[1]["nodes"]
        except Exception:  # noqa: BLE001
            return None
        return next((n["name"] for n in nodes if n.get("leader")), None)

    def logs(self) -> dict[str, Path]:
        return {n.name: n.log_path for n in self.nodes}


class Rabbit:
    """The three-node RabbitMQ anchor (anchors/rabbitmq-cluster.sh): qN on 586N."""

    NODES = (1, 2, 3)

    def __init__(self, base: Path, reuse: bool) -> None:
        self.base = base
        self.reuse = reuse
        self.script = BENCH_DIR / "anchors" / "rabbitmq-cluster.sh"
        self.env = dict(os.environ, RMQ_CLUSTER_BASE=str(base))

    def sh(self, *args: str, timeout: float = 300) -> str:
        p = subprocess.run([str(self.script), *args], env=self.env, capture_output=True,
                           text=True, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"rabbitmq-cluster.sh {' '.join(args)}: {p.stdout}{p.stderr}")
        return p.stdout

    def start(self) -> None:
        if self.reuse:
            if not all(listening(5860 + n) for n in self.NODES):
                raise RuntimeError(f"--rabbit-base {self.base}: the cluster is not running")
            return
        taken = [p for n in self.NODES for p in (5860 + n, 25860 + n) if listening(p)]
        if taken:
            raise RuntimeError(f"ports {taken} are taken (another RabbitMQ anchor cluster?): "
                               "stop it or pass --rabbit-base")
        self.sh("start", "all")
        self.sh("cluster")

    def stop(self) -> None:
        if self.reuse:
            return
        for n in self.NODES:
            try:
                self.sh("stop", str(n), timeout=60)
            except Exception as e:  # noqa: BLE001
                log(f"rabbit q{n} stop: {e}")
            pid = self.pid(n)
            if pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)

    def ctl(self, tool: str, node: int, *args: str) -> Any:
        p = subprocess.run([str(RMQ_BIN / tool), "-q", "-n", f"q{node}@localhost", *args,
                            "--formatter", "json"], env=dict(self.env, HOME=str(self.base)),
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)}: {p.stdout}{p.stderr}")
        return json.loads(p.stdout)

    def any_up(self) -> int:
        return next(n for n in self.NODES if (p := self.pid(n)) and _alive(p))

    def leader(self, queue: str) -> int:
        for q in self.ctl("rabbitmqctl", self.any_up(), "list_queues", "name", "leader"):
            if q["name"] == queue:
                return int(str(q["leader"]).split("@")[0][1:])
        raise RuntimeError(f"no queue {queue}")

    def pid(self, n: int) -> int | None:
        try:
            return int((self.base / f"q{n}" / "pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def pids(self) -> dict[str, int]:
        return {f"q{n}": p for n in self.NODES if (p := self.pid(n))}

    def kill(self, n: int) -> None:
        pid = self.pid(n)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _alive(pid), 10, f"q{n} pid {pid} gone", 0.02)

    def restart(self, n: int) -> None:
        (self.base / f"q{n}" / "pid").unlink(missing_ok=True)
        self.sh("start", str(n))

    def wait_in_sync(self, queue: str, timeout: float = 120) -> list:
        """All three members are leader/follower at the same commit index."""
        def ok() -> list | None:
            st = self.ctl("rabbitmq-queues", self.any_up(), "quorum_status", queue)
            states = {m["Raft State"] for m in st}
            commits = {m["Commit Index"] for m in st}
            if len(st) == 3 and states <= {"leader", "follower"} and "leader" in states \
                    and len(commits) == 1:
                return st
            return None
        return wait_until(ok, timeout, f"quorum queue {queue} in sync", 0.5)

    @staticmethod
    def url(n: int) -> str:
        return f"amqp://guest:guest@127.0.0.1:{5860 + n}/"

    def logs(self) -> dict[str, Path]:
        return {f"q{n}": self.base / f"q{n}" / "log" for n in self.NODES}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# ------------------------------------------------------------------------------------------
# a reconnecting client: a chain of amqpbench processes, ticks merged
# ------------------------------------------------------------------------------------------
class Chain(threading.Thread):
    RETRY = 0.02

    def __init__(self, url: str, flags: list[str], tick: str, duration: float) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.flags = flags
        self.tick = tick
        self.tick_s = float(tick.removesuffix("ms")) / 1000 if tick.endswith("ms") \
            else float(tick.removesuffix("s"))
        self.deadline = time.time() + duration
        self.procs: list[dict] = []  # processes that ran (had ticks)
        self.failed_starts = 0
        self.start_errors: list[str] = []

    def run(self) -> None:
        while (left := self.deadline - time.time()) > 0.3:
            started = time.time()
            p = subprocess.Popen([str(AMQPBENCH), "-url", self.url, "-no-setup", "-drain", "0s",
                                  "-tick", self.tick, "-duration", f"{left:.3f}s", *self.flags],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, err = p.communicate()
            ticks = []
            for line in err.splitlines():
                m = TICK_RE.match(line)
                if m:
                    ticks.append((float(m.group(1)), int(m.group(3))))
            try:
                result = json.loads(out.strip().splitlines()[-1])
            except (IndexError, ValueError):
                result = {"errors": 1, "error_msgs": [f"rc={p.returncode}: {err[-200:]}"]}
            if not ticks:
                self.failed_starts += 1
                if len(self.start_errors) < 3:
                    self.start_errors.extend(result.get("error_msgs", [])[:1])
                time.sleep(self.RETRY)
                continue
            self.procs.append({"started": started, "ended": time.time(), "rc": p.returncode,
                               "ticks": ticks, "result": result})

    def activity(self) -> list[tuple[float, int]]:
        """Wall times of ticks that saw new confirms, with the index of their process."""
        acts = []
        for i, pr in enumerate(self.procs):
            prev = 0
            for wall, conf in pr["ticks"]:
                if conf > prev:
                    acts.append((wall, i))
                prev = conf
        return sorted(acts)

    def stall(self, event: float, started_by: float) -> dict:
        """The event's stall: the longest interval without new confirms that ends after
        ``event`` and began between 2 s before it and ``started_by`` (a stall that begins
        later is not the event's); and the longest stall from 2 s before the event to the
        end of the run (max_confirm_gap_ms's meaning)."""
        acts = self.activity()
        out: dict[str, Any] = {"processes": len(self.procs), "failed_starts": self.failed_starts,
                               "start_errors": self.start_errors}
        if not acts or acts[-1][0] <= event:  # confirms never resumed after the event
            last = max((a for a, _ in acts if a <= event), default=event)
            out.update(resumed=False, gap_ms=None, resume_ms=None,
                       no_confirms_for_ms=round((self.deadline - last) * 1000))
            return out
        pairs = [(a, b, ia, ib) for (a, ia), (b, ib) in zip(acts, acts[1:], strict=False)
                 if b >= event and a >= event - 2.0]
        a, b, _, _ = max(pairs, key=lambda x: x[1] - x[0])
        out.update(max_gap_ms=round((b - a) * 1000), max_gap_started_ms=round((a - event) * 1000))
        own = [x for x in pairs if x[0] <= started_by]
        if not own:
            out.update(resumed=True, gap_ms=None, resume_ms=None)
            return out
        a, b, ia, ib = max(own, key=lambda x: x[1] - x[0])
        out.update(resumed=True, gap_ms=round((b - a) * 1000), resume_ms=round((b - event) * 1000),
                   gap_started_ms=round((a - event) * 1000), reconnected=ia != ib)
        if ia == ib:  # one process lived through it: amqpbench's exact figure, if it is this one
            pr = self.procs[ia]["result"]
            at = pr.get("max_confirm_gap_start_unix")
            if at and a - 2 * self.tick_s <= at <= a + self.tick_s:
                out["exact_gap_ms"] = pr.get("max_confirm_gap_ms")
        return out

    def timeline(self, event: float, before: float = 1.0) -> list[list]:
        """Per process: [ms since the event, confirms] of every tick from ``before`` s ahead
        of the event on (the raw material of the stall)."""
        return [[[round((wall - event) * 1000), conf] for wall, conf in pr["ticks"]
                 if wall >= event - before] for pr in self.procs]

    def confirmed(self) -> int:
        return sum(pr["result"].get("confirmed", 0) for pr in self.procs)

    def nacked(self) -> int:
        return sum(pr["result"].get("nacked", 0) for pr in self.procs)


# ------------------------------------------------------------------------------------------
# the stages
# ------------------------------------------------------------------------------------------
def med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 1) if xs else None


def spread(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": med(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def stage_s3(a: argparse.Namespace, w: Warren, r: Rabbit, out: dict) -> None:
    owner = w.nodes[0]
    w.create_vhost("s3f3", owner, 3)
    w.create_vhost("s3f1", owner, 1)
    common = ["-duration", f"{a.duration}s", "-drain", "3s", *S3]
    # RabbitMQ places a quorum queue's leader on the declaring node (client-local): check
    res, _ = amqpbench(r.url(1), ["-producers", "0", "-consumers", "0", "-duration", "0s",
                                  "-persistent", "-queue-type", "quorum", "-prefix", "s3bench",
                                  "-no-teardown"])
    leader_check = f"q{r.leader('s3bench.q0')}" if not res.get("errors") else res
    cases = {
        "warren_f3": lambda: (w.url(owner, "s3f3"), w.pids(), owner),
        "warren_f1": lambda: (w.url(owner, "s3f1"), w.pids(), owner),
        "rabbit_quorum": lambda: (r.url(1), r.pids(), 1),
    }
    runs: dict[str, list[dict]] = {k: [] for k in cases}
    out["s3"] = {"flags": common, "runs": runs,
                 "rabbit_leader_of_a_queue_declared_via_q1": leader_check}
    log(f"S3: a quorum queue declared through q1 has its leader on {leader_check}")
    for rnd in range(1, a.rounds + 1):
        for case, get in cases.items():
            url, pids, _ = get()
            me = owner.name.split("@")[0] if case.startswith("warren") else "q1"
            extra = ",".join(f"{k}={v}" for k, v in pids.items() if k != me)
            flags = [*common, "-broker-pid", str(pids[me]), "-extra-pids", extra,
                     "-label", f"S3-{case}", "-prefix", "s3bench"]
            if case == "rabbit_quorum":
                flags += ["-queue-type", "quorum"]
            quiet = wait_quiet(a.quiet_max, a.quiet_timeout)
            res, _ = amqpbench(url, flags)
            res["machine_busy_before_pct"] = quiet
            res["other_cpu_excl_nodes_pct"] = other_cpu(res)
            res["round"] = rnd
            runs[case].append(res)
            log(f"S3 round {rnd} {case:14s}: confirmed {res.get('publish_rate', 0):8.0f} msg/s"
                f"  consume {res.get('consume_rate', 0):8.0f}  errors {res.get('errors')}"
                f"  other CPU {res['other_cpu_excl_nodes_pct']}%")


def chained_event(url: str, flags: list[str], a: argparse.Namespace, pre: float, post: float,
                  event: Callable[[], Any]) -> tuple[dict, Any, float]:
    """Run a chained client; after ``pre`` s fire ``event``; keep going ``post`` s."""
    chain = Chain(url, flags, a.tick, pre + post)
    chain.start()
    time.sleep(pre)
    t_event = time.time()
    ev = event()
    t_done = time.time()
    chain.join(pre + post + 60)
    # the stall must begin before the event is over (a kill: at once; a move: before the
    # POST is answered), give or take a tick and the confirms already on their way
    st = chain.stall(t_event, max(t_event, t_done) + 0.1)
    st["event_unix"] = round(t_event, 3)
    st["ticks"] = chain.timeline(t_event)
    st["confirmed"] = chain.confirmed()
    st["nacked"] = chain.nacked()
    st["exit_errors"] = [m for pr in chain.procs for m in pr["result"].get("error_msgs", [])
                         if "never confirmed (waited 0s)" not in m][:6]
    return st, ev, t_event


def steady_flags(a: argparse.Namespace, prefix: str) -> list[str]:
    return [*S3, "-rate", str(a.rate), "-prefix", prefix]


def stage_failover(a: argparse.Namespace, w: Warren, r: Rabbit, out: dict) -> None:
    vh = "fo3"
    w.create_vhost(vh, w.nodes[0], 3)
    owner = w.owner(vh)
    res, _ = amqpbench(w.url(owner, vh), ["-producers", "0", "-consumers", "0", "-duration", "0s",
                                          "-persistent", "-prefix", "fo", "-no-teardown"])
    assert not res.get("errors"), res
    q = "fo.q0"
    res, _ = amqpbench(r.url(1), ["-producers", "0", "-consumers", "0", "-duration", "0s",
                                  "-persistent", "-queue-type", "quorum", "-prefix", "fo",
                                  "-no-teardown"])
    assert not res.get("errors"), res
    r.wait_in_sync(q)
    rounds: dict[str, list[dict]] = {"warren_f3": [], "rabbit_quorum": []}
    flags = steady_flags(a, "fo")
    cases = [c for c in a.failover_cases.split(",") if c]
    out["failover"] = {"flags": flags, "tick": a.tick, "pre_s": a.pre, "post_s": a.post,
                       "cases": cases, "rounds": rounds}
    if cases != ["any"]:
        # every node owns a vhost of its own (factor 1: it never moves), so the Raft
        # leader always owns one too, as in a cluster with many vhosts; then the owner
        # of fo3 is placed on the leader or away from it before each kill
        for n in w.nodes:
            w.create_vhost(f"pin-{n.name.split('@')[0]}", n, 1)
    for rnd, case in ((r, c) for r in range(1, a.rounds + 1) for c in cases):
        if case != "any":
            arrange_owner(w, vh, case)
            st_case: dict[str, Any] = {"case": case}
        else:
            st_case = {}
        failover_round(a, w, r, vh, q, flags, rnd, rounds, st_case)


def arrange_owner(w: Warren, vh: str, case: str) -> None:
    """Move ``vh`` onto the Raft leader (``leader``) or onto a node that does not lead
    (``follower``), unless it is there already."""
    for _ in range(5):
        leader = w.raft_leader()
        owner = w.owner(vh)
        if leader is not None and (owner.name == leader) == (case == "leader"):
            return
        target = w.node(leader) if case == "leader" and leader else \
            next(n for n in w.nodes if n.name not in (leader, owner.name))
        code, body = w.api("POST", f"/api/cluster/vhosts/{vh}/move", {"node": target.name},
                           via=owner, timeout=200)
        log(f"failover: moved {vh} {owner.name} -> {target.name} for a '{case}' round: "
            f"HTTP {code}")
        w.wait_in_sync(vh, 3)
        time.sleep(1.0)  # let a leadership hand-off (if any) settle before looking again
    log(f"failover: could not arrange a '{case}' round (leader {w.raft_leader()}, owner "
        f"{w.owner(vh).name})")


def failover_round(a: argparse.Namespace, w: Warren, r: Rabbit, vh: str, q: str,
                   flags: list[str], rnd: int, rounds: dict[str, list[dict]],
                   st_case: dict[str, Any]) -> None:
    # WarrenMQ: kill -9 the owner, client on another node
    owner = w.owner(vh)
    client = next(n for n in w.nodes if n is not owner)
    raft_leader = w.raft_leader()
    st, _, t_kill = chained_event(w.url(client, vh), flags, a, a.pre, a.post,
                                  lambda o=owner: o.kill())
    after = None
    try:
        after = wait_until(lambda c=client, o=owner: (p := w.placement(vh, via=c))["owner"]
                           != o.name and p["available"] and p, 30, "failover")
    except TimeoutError as e:
        st["failover_error"] = str(e)
    st.update(st_case)
    st.update(round=rnd, killed=owner.name, client_via=client.name,
              killed_raft_leader=raft_leader == owner.name,
              new_owner=after and after["owner"], epoch=after and after["epoch"])
    t0 = time.monotonic()
    owner.launch().wait(90)
    try:
        w.wait_in_sync(vh, 3)
        st["back_in_sync_s"] = round(time.monotonic() - t0, 1)
    except TimeoutError as e:
        st["resync_error"] = str(e)
    rounds["warren_f3"].append(st)
    log(f"failover round {rnd} WarrenMQ: killed {owner.name}, client via {client.name}:"
        f" gap {st.get('gap_ms')} ms, resume {st.get('resume_ms')} ms after the kill,"
        f" {st['failed_starts']} failed reconnects, new owner {st.get('new_owner')},"
        f" {'also' if st['killed_raft_leader'] else 'not'} the Raft leader,"
        f" back in sync after {st.get('back_in_sync_s')} s")
    # RabbitMQ: kill -9 the leader's node, client on a follower
    leader = r.leader(q)
    client_n = next(n for n in r.NODES if n != leader)
    st, _, t_kill = chained_event(r.url(client_n), flags, a, a.pre, a.post,
                                  lambda n=leader: r.kill(n))
    try:
        st["new_leader"] = f"q{r.leader(q)}"
    except Exception as e:  # noqa: BLE001
        st["new_leader"] = f"? ({e})"
    st.update(st_case)
    st.update(round=rnd, killed=f"q{leader}", client_via=f"q{client_n}")
    t0 = time.monotonic()
    r.restart(leader)
    r.wait_in_sync(q)
    st["back_in_sync_s"] = round(time.monotonic() - t0, 1)
    rounds["rabbit_quorum"].append(st)
    log(f"failover round {rnd} RabbitMQ: killed q{leader}, client via q{client_n}:"
        f" gap {st.get('gap_ms')} ms (exact {st.get('exact_gap_ms')}), resume"
        f" {st.get('resume_ms')} ms after the kill, new leader {st['new_leader']}")


def stage_move(a: argparse.Namespace, w: Warren, out: dict) -> None:
    vh = "mv3"
    n1, n2, n3 = w.nodes
    w.create_vhost(vh, n1, 3)
    t0 = time.monotonic()
    res, _ = amqpbench(w.url(n1, vh), ["-producers", "1", "-consumers", "0", "-size", "1024",
                                       "-persistent", "-confirm", "1000", "-count",
                                       str(a.backlog), "-duration", "600s", "-prefix", "backlog",
                                       "-no-teardown", "-drain", "30s"], timeout=700)
    assert not res.get("errors") and res.get("confirmed") == a.backlog, res
    log(f"move: {a.backlog} messages queued in {vh} in {time.monotonic() - t0:.1f} s")
    w.wait_in_sync(vh, 3)
    res, _ = amqpbench(w.url(n1, vh), ["-producers", "0", "-consumers", "0", "-duration", "0s",
                                       "-persistent", "-prefix", "mv", "-no-teardown"])
    assert not res.get("errors"), res
    flags = steady_flags(a, "mv")
    rounds: list[dict] = []
    out["move"] = {"flags": flags, "tick": a.tick, "backlog": a.backlog, "rounds": rounds}
    # the API relays a move asked of a non-owner to the owner: check that once (on b15f138
    # the relay dropped the body: 400 "key missing: node"); the rounds ask the owner itself
    src = w.owner(vh)
    code, body = w.api("POST", f"/api/cluster/vhosts/{vh}/move",
                       {"node": (n2 if src is n1 else n1).name}, via=n3, timeout=200)
    out["move"]["relay_check"] = {"asked": n3.name, "owner": src.name, "status": code,
                                  "body": body}
    log(f"move asked of a non-owner ({n3.name}): HTTP {code} {body}")
    w.wait_in_sync(vh, 3)
    for rnd in range(1, a.rounds + 1):
        src = w.owner(vh)
        dst = n2 if src is n1 else n1
        holder: dict[str, Any] = {}

        def move(dst: NodeProcess = dst, src: NodeProcess = src, holder: dict = holder) -> None:
            t = time.time()
            holder["code"], holder["body"] = w.api("POST", f"/api/cluster/vhosts/{vh}/move",
                                                   {"node": dst.name}, via=src, timeout=200)
            holder["http_ms"] = round((time.time() - t) * 1000)
        st, _, _ = chained_event(w.url(n3, vh), flags, a, a.pre, a.move_post, move)
        body = holder.get("body")
        st.update(round=rnd, source=src.name, target=dst.name, client_via=n3.name,
                  http_status=holder.get("code"), http_ms=holder.get("http_ms"),
                  api=body, pause_ms=body.get("pause_ms") if isinstance(body, dict) else None)
        try:
            w.wait_in_sync(vh, 3)
        except TimeoutError as e:
            st["resync_error"] = str(e)
        code, q = w.api("GET", f"/api/queues/{urllib.parse.quote(vh, safe='')}/backlog.q0",
                        via=w.owner(vh))
        st["backlog_messages"] = q.get("messages") if code == 200 and isinstance(q, dict) else q
        rounds.append(st)
        if st["http_status"] != 200:
            log(f"move round {rnd}: {body}")
        log(f"move round {rnd}: {src.name} -> {dst.name}: HTTP {st['http_status']} in"
            f" {st['http_ms']} ms, pause_ms {st['pause_ms']}, client gap {st.get('gap_ms')} ms"
            f" (resume {st.get('resume_ms')} ms after the request), backlog"
            f" {st['backlog_messages']}")


def summarize(out: dict) -> None:
    """Medians and spreads from whatever rounds ran."""
    if "s3" in out:
        s3 = out["s3"]
        s = {k: spread([x.get("publish_rate") for x in v if not x.get("errors")])
             for k, v in s3["runs"].items()}
        f3, f1, q = (s[k]["median"] for k in ("warren_f3", "warren_f1", "rabbit_quorum"))
        s3["cpu_pct_medians"] = {
            k: {"nodes": med([(x.get("broker_cpu_pct") or 0)
                              + sum((x.get("extra_cpu_pct") or {}).values()) for x in v]),
                "generator": med([x.get("gen_cpu_pct") for x in v]),
                "other": med([x.get("other_cpu_excl_nodes_pct") for x in v])}
            for k, v in s3["runs"].items()}
        s3.update(confirmed_msg_s=s, ratio_f3_quorum=round(f3 / q, 2) if f3 and q else None,
                  ratio_f3_f1=round(f3 / f1, 2) if f3 and f1 else None)
        # the same ratios within each round (A and B ran back to back), then their median
        by_round: dict[int, dict[str, float]] = {}
        for k, v in s3["runs"].items():
            for x in v:
                if not x.get("errors") and x.get("publish_rate"):
                    by_round.setdefault(x["round"], {})[k] = x["publish_rate"]
        s3["per_round_ratio_f3_quorum"] = [round(d["warren_f3"] / d["rabbit_quorum"], 2)
                                           for d in by_round.values()
                                           if "warren_f3" in d and "rabbit_quorum" in d]
        s3["per_round_ratio_f3_f1"] = [round(d["warren_f3"] / d["warren_f1"], 2)
                                       for d in by_round.values()
                                       if "warren_f3" in d and "warren_f1" in d]
    if "failover" in out:
        f, rounds = out["failover"], out["failover"]["rounds"]
        f.update(gap_ms={k: spread([x.get("gap_ms") for x in v]) for k, v in rounds.items()},
                 resume_ms={k: spread([x.get("resume_ms") for x in v])
                            for k, v in rounds.items()},
                 max_gap_ms={k: spread([x.get("max_gap_ms") for x in v])
                             for k, v in rounds.items()},
                 exact_gap_ms={k: spread([x.get("exact_gap_ms") for x in v])
                               for k, v in rounds.items()},
                 not_resumed={k: sum(1 for x in v if not x.get("resumed"))
                              for k, v in rounds.items()})
        # per arranged case, and by what was actually killed (the owner led Raft or not)
        f["gap_ms_by_case"] = {
            f"{k}/{c}": spread([x.get("gap_ms") for x in v if x.get("case") == c])
            for k, v in rounds.items() for c in f.get("cases", []) if c != "any"}
        f["gap_ms_by_killed_leader"] = {
            f"{'leader' if lead else 'not leader'}": spread(
                [x.get("gap_ms") for x in rounds["warren_f3"]
                 if bool(x.get("killed_raft_leader")) == lead]) for lead in (True, False)}
    if "move" in out:
        m, rounds = out["move"], out["move"]["rounds"]
        m.update({k: spread([x.get(k) for x in rounds])
                  for k in ("pause_ms", "gap_ms", "resume_ms", "http_ms", "max_gap_ms")})
        m["not_resumed"] = sum(1 for x in rounds if not x.get("resumed"))


# ------------------------------------------------------------------------------------------
def fmt(v: Any) -> str:
    return "-" if v is None else (f"{v:.0f}" if isinstance(v, float) else str(v))


def table(out: dict) -> str:
    lines = [f"# replication bench {out['started']}  commit {out['commit']}  rounds {out['rounds']}",
             f"# load before: {out['uptime_before']}",
             *(f"# load at {k}: {v}" for k, v in out.get("uptime_at_stage", {}).items()),
             f"# load after:  {out.get('uptime_after', '?')}"]
    if "s3" in out:
        s = out["s3"]
        lines += ["", f"S3 ({' '.join(s['flags'])}): confirmed msg/s, median [min..max] of n",
                  f"{'case':34s} {'median':>8s} {'min':>8s} {'max':>8s}  n"
                  "   CPU% (medians): 3 nodes / generator / other processes"]
        names = {"warren_f3": "WarrenMQ factor 3 (client on owner)",
                 "warren_f1": "WarrenMQ factor 1 (client on owner)",
                 "rabbit_quorum": "RabbitMQ quorum (client on leader)"}
        for k, label in names.items():
            x = s["confirmed_msg_s"][k]
            c = s["cpu_pct_medians"][k]
            lines.append(f"{label:34s} {fmt(x['median']):>8s} {fmt(x['min']):>8s}"
                         f" {fmt(x['max']):>8s}  {x['n']}   {fmt(c['nodes'])} / "
                         f"{fmt(c['generator'])} / {fmt(c['other'])}")
        lines.append(f"ratio of the medians: factor3/quorum {s['ratio_f3_quorum']} (target >= "
                     f"1.5), factor3/factor1 {s['ratio_f3_f1']} (target >= 0.5)")
        for k, label in (("per_round_ratio_f3_quorum", "factor3/quorum"),
                         ("per_round_ratio_f3_f1", "factor3/factor1")):
            rs = s[k]
            lines.append(f"per round {label}: {' '.join(map(str, rs))} (median "
                         f"{round(statistics.median(rs), 2)})" if rs else f"per round {label}: -")
    if "failover" in out:
        f = out["failover"]
        lines += ["", f"Failover: kill -9 of the owner / leader's node, client on a surviving "
                      f"node ({' '.join(f['flags'])}, tick {f['tick']}), ms, median [min..max]"]
        for k, label in (("warren_f3", "WarrenMQ factor 3"), ("rabbit_quorum", "RabbitMQ quorum")):
            g, rs = f["gap_ms"][k], f["resume_ms"][k]
            lines.append(f"{label:18s} confirm gap {fmt(g['median'])} [{fmt(g['min'])}.."
                         f"{fmt(g['max'])}]  resumed after kill {fmt(rs['median'])} "
                         f"[{fmt(rs['min'])}..{fmt(rs['max'])}]  n={g['n']}"
                         f"  not resumed {f['not_resumed'][k]}")
            ex = f["exact_gap_ms"][k]
            if ex["n"]:
                lines.append(f"{'':18s} amqpbench max_confirm_gap_ms (client kept its "
                             f"connection, {ex['n']} rounds): {fmt(ex['median'])} "
                             f"[{fmt(ex['min'])}..{fmt(ex['max'])}]")
            lines.append(f"{'':18s} per round gap: "
                         + " ".join(fmt(x.get("gap_ms")) + ("*" if x.get("killed_raft_leader")
                                                            else "") for x in f["rounds"][k]))
            if k == "warren_f3":
                lead = [x.get("gap_ms") for x in f["rounds"][k] if x.get("killed_raft_leader")]
                rest = [x.get("gap_ms") for x in f["rounds"][k]
                        if not x.get("killed_raft_leader")]
                for c, x in f["gap_ms_by_killed_leader"].items():
                    lines.append(f"{'':18s} owner {c:10s}: {fmt(x['median'])} "
                                 f"[{fmt(x['min'])}..{fmt(x['max'])}] n={x['n']}")
                lines.append(f"{'':18s} (* the owner was also the Raft leader: median "
                             f"{fmt(med(lead))} ms in {len(lead)} rounds; otherwise "
                             f"{fmt(med(rest))} ms in {len(rest)})")
            lines.append(f"{'':18s} per round resumed after kill: "
                         + " ".join(fmt(x.get("resume_ms")) for x in f["rounds"][k]))
            for c in f.get("cases", []):
                x = f.get("gap_ms_by_case", {}).get(f"{k}/{c}")
                if x:
                    lines.append(f"{'':18s} '{c}' rounds: {fmt(x['median'])} "
                                 f"[{fmt(x['min'])}..{fmt(x['max'])}] n={x['n']}")
            mg = f["max_gap_ms"][k]
            lines.append(f"{'':18s} longest stall of the whole run (any cause) {fmt(mg['median'])}"
                         f" [{fmt(mg['min'])}..{fmt(mg['max'])}]; per round: "
                         + " ".join(fmt(x.get("max_gap_ms")) for x in f["rounds"][k]))
    if "move" in out:
        m = out["move"]
        lines += ["", f"Move with {m['backlog']} messages queued (publisher {' '.join(m['flags'])},"
                      f" tick {m['tick']}), ms, median [min..max]"]
        for k, label in (("pause_ms", "API pause_ms"), ("gap_ms", "client confirm gap"),
                         ("resume_ms", "resumed after POST"), ("http_ms", "POST answered"),
                         ("max_gap_ms", "longest stall (any)")):
            x = m[k]
            lines.append(f"{label:20s} {fmt(x['median']):>7s} [{fmt(x['min'])}..{fmt(x['max'])}]"
                         f"  n={x['n']}")
        if "relay_check" in m:
            rc = m["relay_check"]
            lines.append(f"move asked of a non-owner ({rc['asked']}): HTTP {rc['status']} "
                         f"{json.dumps(rc['body'])}")
        lines.append(f"{'per round pause/gap':20s} "
                     + " ".join(f"{fmt(x.get('pause_ms'))}/{fmt(x.get('gap_ms'))}"
                                for x in m["rounds"]))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--duration", type=float, default=10.0, help="S3 publishing time, s")
    p.add_argument("--stages", default="s3,failover,move")
    p.add_argument("--tick", default="20ms", help="amqpbench -tick of the chained clients")
    p.add_argument("--rate", type=int, default=2000, help="steady publisher's msg/s")
    p.add_argument("--pre", type=float, default=3.0, help="s of steady publishing before the kill")
    p.add_argument("--post", type=float, default=7.0, help="s of publishing after the kill")
    p.add_argument("--move-post", type=float, default=5.0, help="s after the move request")
    p.add_argument("--backlog", type=int, default=100_000)
    p.add_argument("--failover-cases", default="any",
                   help="'any' (kill the owner wherever it is) or a list of 'leader' (the "
                        "owner leads Raft too) and 'follower' (it does not), alternated; "
                        "each node then owns a factor-1 vhost of its own")
    p.add_argument("--quiet-max", type=float, default=40.0,
                   help="before each S3 run wait until the machine is below this CPU%%")
    p.add_argument("--quiet-timeout", type=float, default=5.0)
    p.add_argument("--rabbit-base", default="", help="reuse a running anchor cluster")
    a = p.parse_args()
    stages = set(a.stages.split(","))
    if not AMQPBENCH.exists():
        sys.exit(f"missing {AMQPBENCH}: run {BENCH_DIR}/build.sh --anchors first")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS_DIR / f"replication-{stamp}.json"
    out: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %s"],
                                 capture_output=True, text=True).stdout.strip(),
        "argv": sys.argv, "rounds": a.rounds, "uptime_before": uptime(), "cpus": os.cpu_count(),
        "amqpbench": str(AMQPBENCH),
    }
    tmp = Path(tempfile.mkdtemp(prefix="warren-repl-bench."))
    w = Warren(tmp / "warren")
    reuse = bool(a.rabbit_base)
    r = Rabbit(Path(a.rabbit_base) if reuse else tmp / "rmq", reuse)
    try:
        log(f"starting WarrenMQ (3 nodes) and RabbitMQ (3 nodes) under {tmp}")
        rabbit_err: list[BaseException] = []

        def start_rabbit() -> None:
            try:
                r.start()
            except BaseException as e:  # noqa: BLE001
                rabbit_err.append(e)
        t = threading.Thread(target=start_rabbit)
        t.start()
        w.start()
        t.join()
        if rabbit_err:
            raise rabbit_err[0]
        log(f"up: WarrenMQ {w.pids()}, RabbitMQ {r.pids()}")
        out["uptime_at_stage"] = {}
        for stage, run in (("s3", lambda: stage_s3(a, w, r, out)),
                           ("failover", lambda: stage_failover(a, w, r, out)),
                           ("move", lambda: stage_move(a, w, out))):
            if stage in stages:
                out["uptime_at_stage"][stage] = uptime()
                log(f"stage {stage}: {out['uptime_at_stage'][stage]}")
                run()
    except BaseException as e:
        out["error"] = f"{type(e).__name__}: {e}"
        log(f"stopped by {out['error']}")
        if not isinstance(e, Exception):
            raise
    finally:
        out["uptime_after"] = uptime()
        logdir = RESULTS_DIR / f"replication-{stamp}-logs"
        logdir.mkdir(exist_ok=True)
        for name, path in {**w.logs(), **r.logs()}.items():
            try:
                if path.is_dir():
                    shutil.copytree(path, logdir / name, dirs_exist_ok=True)
                elif path.exists():
                    shutil.copy(path, logdir / f"{name}.log")
            except OSError:
                pass
        w.stop()
        r.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        summarize(out)
        out_path.write_text(json.dumps(out, indent=1))
        print(table(out))
        print(f"results: {out_path}\nnode logs: {logdir}")


if __name__ == "__main__":
    main()
