"""Does LMDB work on one vhost stall the clients of another?  (A benchmark, never
collected by pytest.)

Two WarrenMQ nodes from a given checkout (``--code``, default this one; its PYTHONPATH is
what the nodes run).  Vhost ``light`` is owned by n1 (one copy); vhost ``heavy`` is owned
by n2 with n1 as its replica, and its durable queue ``big`` holds ``--messages`` persistent
16-byte messages (filled once with amqpbench and kept as a template of both data
directories, so every run starts from the same files).  Each run, on n1:

1. a light publisher on ``light``: pika, publisher confirms, ``--rate`` msg/s, each publish
   waits for its confirm; it runs for the whole run;
2. after a quiet ``--quiet`` seconds (baseline), ``heavy`` moves to n1 (POST
   /api/cluster/vhosts/heavy/move): n1 *recovers* ``big`` while the publisher goes on;
   the phase ends when a passive queue.declare of ``big`` on n1 answers, plus ``--tail``;
3. after another quiet spell, queue.purge of ``big`` on n1 (a paged queue: all but the
   in-memory part is on disk); the phase ends at purge-ok plus ``--tail``.

Latency of the light publisher per phase: from each publish to its confirm, p50 / p99 /
max in ms.  Publishes go out on schedule whatever is unconfirmed, so a stall of the
broker's loop delays every publish sent during it (no coordinated omission); how far this
process itself fell behind its schedule (a starved CPU) is printed beside.  Run it against two checkouts in the same session, alternating, e.g.:

    python3 tests/bench/loop_stall.py --code ../warren-before --code . --rounds 2

env: AMQPBENCH (the generator, default ~/.cache/warren-bench/bin/amqpbench),
BENCH_WORK (default ~/.cache/warren-bench; the template under loop-stall-template-<N>/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aio_pika
import pika

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.nodeproc import NodeProcess, http_json  # noqa: E402

SECRET = "loop-stall-bench-secret"
WORK = Path(os.environ.get("BENCH_WORK", Path.home() / ".cache" / "warren-bench"))
AMQPBENCH = os.environ.get("AMQPBENCH", str(WORK / "bin" / "amqpbench"))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_until(cond: Any, timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - a node may be starting
            last = e
        time.sleep(every)
    raise TimeoutError(f"{what}: not reached in {timeout}s (last error: {last})")


class Node(NodeProcess):
    """A node running the code of ``code`` (its PYTHONPATH, and its working directory:
    ``python -m node`` looks there first)."""

    code = Path(".")

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PYTHONPATH"] = str(self.code)
        return env

    def launch(self) -> "Node":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen([sys.executable, "-m", "node"], env=self.env(),
                                         stdout=log_file, stderr=subprocess.STDOUT,
                                         cwd=self.code)
        return self


class Cluster:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.nodes = [Node(base / f"n{i}", name=f"n{i}@localhost", cluster_secret=SECRET,
                           log_level="info", replication_factor="2",
                           # main's loop stalls for seconds: no failover back meanwhile
                           failover_timeout="60")
                      for i in (1, 2)]
        peers = ",".join(n.raft_address for n in self.nodes)
        for n in self.nodes:
            n.settings["peers"] = peers

    def start(self, code: Path) -> None:
        for n in self.nodes:
            n.code = code
            n.launch()
        for n in self.nodes:
            n.wait(120)
        wait_until(lambda: len(self.api("GET", "/api/cluster-status")[1]["nodes"]) == 2, 120,
                   "two nodes in the cluster")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def api(self, method: str, path: str, body: object = None, via: Node | None = None,
            timeout: float = 60) -> tuple[int, Any]:
        via = via or self.nodes[0]
        return http_json(via.http_url, method, path, body, timeout=timeout)

    def placement(self, vhost: str) -> dict:
        code, body = self.api("GET", f"/api/cluster/vhosts/{vhost}", timeout=5)
        assert code == 200, (code, body)
        return body

    def wait_in_sync(self, vhost: str, copies: int, timeout: float = 300) -> dict:
        def ok() -> dict | None:
            p = self.placement(vhost)
            if not p.get("available") or len(p.get("in_sync", [])) < copies - 1:
                return None
            if any(v.get("records") for v in (p.get("lag") or {}).values()):
                return None
            return p
        return wait_until(ok, timeout, f"vhost {vhost} in sync", 0.2)

    def create_vhost(self, vhost: str, owner: Node, copies: int) -> None:
        code, body = self.api("PUT", f"/api/cluster/vhosts/{vhost}",
                              {"owner": owner.name, "replicas": copies})
        assert code in (201, 204), (code, body)
        code, body = self.api("PUT", f"/api/permissions/{vhost}/guest",
                              {"configure": ".*", "write": ".*", "read": ".*"})
        assert code in (201, 204), (code, body)
        self.wait_in_sync(vhost, copies)


def params(node: Node, vhost: str) -> pika.ConnectionParameters:
    return pika.ConnectionParameters("127.0.0.1", node.amqp_port, vhost,
                                     pika.PlainCredentials("guest", "guest"),
                                     heartbeat=0, blocked_connection_timeout=None)


def make_template(base: Path, code: Path, messages: int) -> None:
    """Both data directories with ``heavy``/``big`` full (owner n2, n1 in sync)."""
    c = Cluster(base)
    c.start(code)
    try:
        n1, n2 = c.nodes
        c.create_vhost("light", n1, 1)
        c.create_vhost("heavy", n2, 2)
        url = f"amqp://guest:guest@127.0.0.1:{n2.amqp_port}/heavy"
        t0 = time.monotonic()
        p = subprocess.run([AMQPBENCH, "-url", url, "-producers", "1", "-consumers", "0",
                            "-persistent", "-confirm", "2000", "-size", "16", "-count",
                            str(messages), "-duration", "3600s", "-drain", "0s",
                            "-exchange-type", "default", "-prefix", "big", "-no-teardown"],
                           capture_output=True, text=True, timeout=3600)
        log(f"fill: {messages} messages in {time.monotonic() - t0:.0f}s: {p.stdout.strip()}")
        conn = pika.BlockingConnection(params(n2, "heavy"))
        ch = conn.channel()
        q = wait_until(lambda: [q for q in (c.api("GET", "/api/queues/heavy", via=n2)[1] or [])
                                if q.get("messages", 0) >= messages], 60, "queue filled")
        conn.close()
        c.wait_in_sync("heavy", 2)
        log(f"template: queue {q[0]['name']} holds {q[0]['messages']} messages")
        (base / "queue").write_text(q[0]["name"])
        del ch
    finally:
        c.stop()
    # the ports are part of the Raft configuration: keep them with the template
    (base / "ports.json").write_text(json.dumps(
        [[n.amqp_port, n.http_port, n.raft_port, n.forward_port] for n in c.nodes]))


class Publisher(threading.Thread):
    """``rate`` publishes per second with confirms, sent on schedule whatever is still
    unconfirmed (aio-pika, a loop of its own): a stalled broker delays every publish sent
    during the stall, not just one (no coordinated omission).  (sent, confirmed) times, and
    how late each send was against its schedule (this process starved of CPU)."""

    def __init__(self, node: Node, rate: float) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.rate = rate
        self.samples: list[tuple[float, float, float]] = []  # (due, sent, confirmed)
        self.stop_flag = threading.Event()
        self.error: BaseException | None = None
        self.failed = 0

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self.error = e

    async def _main(self) -> None:
        url = f"amqp://guest:guest@127.0.0.1:{self.node.amqp_port}/light"
        conn = await aio_pika.connect(url)
        ch = await conn.channel(publisher_confirms=True)
        await ch.declare_queue("light", durable=True)
        # bounded queue: the broker drops the oldest, so the run never grows the store
        await ch.declare_queue("light-bounded", durable=True,
                               arguments={"x-max-length": 1000})
        pending: set[asyncio.Task] = set()

        async def one(due: float) -> None:
            sent = time.monotonic()
            try:
                await ch.default_exchange.publish(
                    aio_pika.Message(b"x" * 16,
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key="light-bounded")
            except Exception:  # noqa: BLE001 - counted, and the run says so
                self.failed += 1
                return
            self.samples.append((due, sent, time.monotonic()))

        interval = 1.0 / self.rate
        due = time.monotonic()
        while not self.stop_flag.is_set() and not conn.is_closed:
            now = time.monotonic()
            if now < due:
                await asyncio.sleep(due - now)
            t = asyncio.ensure_future(one(due))
            pending.add(t)
            t.add_done_callback(pending.discard)
            due += interval
        if pending:
            await asyncio.wait(pending, timeout=30)
        await conn.close()

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        rows = [s for s in self.samples if t0 <= s[1] <= t1]
        if not rows:
            return {"n": 0}
        lat = sorted((c - s) * 1000 for _, s, c in rows)
        late = max((s - d) * 1000 for d, s, _ in rows)

        def q(v: list[float], p: float) -> float:
            return v[min(len(v) - 1, int(p * len(v)))]
        return {"n": len(rows), "p50": q(lat, 0.5), "p99": q(lat, 0.99), "max": lat[-1],
                "late_send_max": late, "seconds": t1 - t0}


def one_run(template: Path, code: Path, args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="loop-stall-"))
    try:
        for i in (1, 2):
            shutil.copytree(template / f"n{i}", base / f"n{i}")
        c = Cluster(base)
        ports = json.loads((template / "ports.json").read_text())
        for n, (a, h, r, f) in zip(c.nodes, ports, strict=True):
            n.amqp_port, n.http_port, n.raft_port, n.forward_port = a, h, r, f
        peers = ",".join(n.raft_address for n in c.nodes)
        for n in c.nodes:
            n.settings["peers"] = peers
        queue = (template / "queue").read_text()
        c.start(code)
        n1, n2 = c.nodes
        try:
            c.wait_in_sync("heavy", 2)
            c.wait_in_sync("light", 1)
            pub = Publisher(n1, args.rate)
            pub.start()
            time.sleep(args.quiet)
            t_base = time.monotonic() - args.quiet + 1

            # recovery: heavy moves to n1, which recovers `big` while `light` publishes
            t0 = time.monotonic()
            code_, body = c.api("POST", "/api/cluster/vhosts/heavy/move", {"node": n1.name},
                                via=n2, timeout=300)
            t_moved = time.monotonic()
            assert code_ in (200, 201, 204), (code_, body)
            conn = wait_until(lambda: pika.BlockingConnection(params(n1, "heavy")), 120,
                              "heavy on n1")
            ch = conn.channel()
            count = ch.queue_declare(queue, passive=True).method.message_count
            t_recovered = time.monotonic()
            time.sleep(args.tail)
            t1 = time.monotonic()
            time.sleep(args.quiet)

            # purge of the paged queue on n1
            t2 = time.monotonic()
            purged = ch.queue_purge(queue).method.message_count
            t_purged = time.monotonic()
            time.sleep(args.tail)
            t3 = time.monotonic()
            conn.close()
            pub.stop_flag.set()
            pub.join(30)
            if pub.error is not None or pub.failed:
                raise RuntimeError(f"light publisher: {pub.failed} publishes failed, "
                                   f"{pub.error!r}")
            out = {
                "code": str(code),
                "baseline": pub.window(t_base, t0 - 0.5),
                "recovery": pub.window(t0, t1),
                "purge": pub.window(t2, t3),
                "move_s": t_moved - t0, "recovered_declare_s": t_recovered - t0,
                "recovered_count": count, "purge_ok_s": t_purged - t2, "purged": purged,
            }
            return out
        finally:
            c.stop()
            logs = {n.name: n.log_text()[-2000:] for n in c.nodes}
            if args.keep_logs:
                for name, text in logs.items():
                    print(f"--- {name} log tail ---\n{text}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def fmt(w: dict[str, Any]) -> str:
    if not w.get("n"):
        return "no samples"
    return (f"p50 {w['p50']:7.1f}  p99 {w['p99']:7.1f}  max {w['max']:7.1f} ms"
            f"  (n={w['n']}; latest send {w['late_send_max']:.0f} ms behind schedule)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--code", action="append", type=Path,
                    help="checkout whose code the nodes run (repeat: runs alternate)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--quiet", type=float, default=4.0)
    ap.add_argument("--tail", type=float, default=2.0)
    ap.add_argument("--template", type=Path, default=None)
    ap.add_argument("--keep-logs", action="store_true")
    args = ap.parse_args()
    codes = [c.resolve() for c in (args.code or [Path(__file__).resolve().parents[2]])]
    print("command:", " ".join([sys.executable, *sys.argv]), flush=True)
    template = args.template or WORK / f"loop-stall-template-{args.messages}"
    if not (template / "ports.json").exists():
        shutil.rmtree(template, ignore_errors=True)
        template.mkdir(parents=True)
        log(f"making the template in {template} with {codes[-1]}")
        make_template(template, codes[-1], args.messages)
    results: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        for code in codes:
            log(f"round {rnd + 1}: {code}")
            r = one_run(template, code, args)
            results.append(r)
            log(f"  move {r['move_s']:.2f}s, declare-ok of the recovered queue after "
                f"{r['recovered_declare_s']:.2f}s ({r['recovered_count']} messages), purge-ok "
                f"after {r['purge_ok_s']:.2f}s ({r['purged']} messages)")
            for phase in ("baseline", "recovery", "purge"):
                log(f"  {phase:9s} {fmt(r[phase])}")
    print("\nsummary (light publisher, publish -> confirm, ms; median over rounds of each "
          "figure):")
    for code in codes:
        rs = [r for r in results if r["code"] == str(code)]
        for phase in ("baseline", "recovery", "purge"):
            ws = [r[phase] for r in rs if r[phase].get("n")]
            if ws:
                print(f"  {str(code):30s} {phase:9s} p50 "
                      f"{statistics.median(w['p50'] for w in ws):7.1f}  p99 "
                      f"{statistics.median(w['p99'] for w in ws):7.1f}  max "
                      f"{statistics.median(w['max'] for w in ws):7.1f}   per round p99: "
                      + ", ".join(f"{w['p99']:.1f}" for w in ws)
                      + "  max: " + ", ".join(f"{w['max']:.0f}" for w in ws))
    out = WORK / "results" / f"loop-stall-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"raw results: {out}")


if __name__ == "__main__":
    main()
