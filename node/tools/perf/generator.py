"""`warren perf`: an AMQP 0-9-1 load generator in the spirit of RabbitMQ's PerfTest.

    warren perf [-h URL] [-x PRODUCERS] [-y CONSUMERS] [-s SIZE] [-r RATE] [-z SECONDS]
                [--persistent | -f persistent] [-c CONFIRM_WINDOW] [-q PREFETCH]
                [-a | -A ACK_EVERY] [-t direct|fanout|topic] [--queues N] [--json]

It declares a private topology (`perf.*`: exchange `perf.<type>`, queues `perf.q<i>`),
runs producers and consumers (one connection each) spread over worker processes,
prints per-second rates on stderr, then publish/consume rates and end-to-end latency
percentiles (from a send timestamp in the body) as a table or as one JSON object, and
deletes its topology.  Producer i publishes to queue i % N (direct); fanout and topic
route every message to every queue; consumer j reads queue j % N.

The hot paths live in `node.tools.perf.client`: pre-encoded publish frames written in large
batches, and a minimal delivery parser, so that one producer process publishes well
over 100k 16-byte messages per second and the generator is not what is measured.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue as queue_mod
import sys
import time
from typing import Any

from node.tools.perf.client import (
    C_CONFIRMED,
    C_CONSUMED,
    C_NACKED,
    C_PUBLISHED,
    HIST_BUCKETS,
    K_GO,
    K_READY,
    K_STOP_CONS,
    K_STOP_PUB,
    NSLOTS,
    AmqpUrl,
    ClientSpec,
    PerfError,
    Wire,
    hist_percentiles,
    run_worker,
)

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
TOPIC_KEY = "a.b.c.x"
PERCENTILES = (0.5, 0.75, 0.95, 0.99)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="warren perf", add_help=False,
        description="AMQP 0-9-1 load generator (PerfTest-style flags).")
    a = p.add_argument
    a("--help", action="help", help="show this help and exit")
    a("-h", "--uri", default=DEFAULT_URL, help=f"broker URL (default {DEFAULT_URL.replace('%', '%%')})")
    a("-x", "--producers", type=int, default=1, help="producer connections (default 1)")
    a("-y", "--consumers", type=int, default=1, help="consumer connections (default 1)")
    a("-s", "--size", type=int, default=16,
      help="message body bytes, at least 8: the body starts with the send timestamp")
    a("-r", "--rate", type=float, default=0.0,
      help="messages/s per producer (default 0: as fast as possible)")
    a("-C", "--pmessages", type=int, default=0,
      help="messages per producer, then stop (default 0: until --time)")
    a("-z", "--time", type=float, default=10.0, help="publishing seconds (default 10)")
    a("-D", "--drain", type=float, default=3.0,
      help="at most this many seconds for consumers/confirms to catch up (default 3)")
    a("--persistent", action="store_true", help="delivery-mode 2, durable queues/exchange")
    a("-f", "--flag", action="append", default=[], choices=["persistent", "transient"],
      help="message flag, PerfTest-style: -f persistent")
    a("-c", "--confirm", type=int, default=0,
      help="publisher confirms with at most N unconfirmed messages per producer")
    a("-q", "--qos", type=int, default=0, help="consumer prefetch count (default 0: none)")
    a("-a", "--autoack", action="store_true", help="consume with no-ack")
    a("-A", "--multi-ack-every", type=int, default=0,
      help="manual ack: one basic.ack(multiple) every N messages (default: each message)")
    a("-t", "--type", default="direct", choices=["direct", "fanout", "topic"],
      help="exchange type (default direct)")
    a("--queues", type=int, default=1, help="number of queues (default 1)")
    a("--topic-bindings", type=int, default=1,
      help="topic: bindings per queue, exactly one of which matches (default 1)")
    a("--prefix", default="perf", help="name prefix of the exchange and queues (default perf)")
    a("--processes", type=int, default=0,
      help="worker processes (default: one per client, at most max(2, CPUs))")
    a("--batch-bytes", type=int, default=65536,
      help="producer write size in bytes when not rate-limited (default 65536)")
    a("--no-teardown", action="store_true", help="leave the queues and exchange in place")
    a("--broker-pid", type=int, default=0, help="report this process's CPU%% during the run")
    a("--label", default="", help="copied into the JSON result")
    a("--json", action="store_true", help="print the result as one JSON object on stdout")
    a("--quiet", action="store_true", help="no per-second lines on stderr")
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    o = parser().parse_args(argv)
    o.persistent = o.persistent or "persistent" in o.flag
    o.size = max(o.size, 8)
    o.queues = max(o.queues, 1)
    o.topic_bindings = max(o.topic_bindings, 1)
    o.ack_every = max(o.multi_ack_every, 1)
    if not o.autoack and o.qos and o.ack_every > o.qos:
        o.ack_every = o.qos  # otherwise the consumer would stall on its prefetch
    if o.producers < 0 or o.consumers < 0 or (o.producers == 0 and o.consumers == 0):
        raise SystemExit("warren perf: need at least one producer or consumer")
    return o


# ---------------------------------------------------------------- topology


def topic_patterns(n: int) -> list[str]:
    """n binding patterns of which exactly one ("#.x") matches TOPIC_KEY."""
    pats = ["#.x"]
    i = 0
    while len(pats) < n:
        pats.append((f"a{i}.*.c", f"#.x{i}", f"*.b{i}.#", f"a.b{i}.*.x")[i % 4])
        i += 1
    return pats[:n]


class Topology:
    def __init__(self, o: argparse.Namespace) -> None:
        self.o = o
        self.exchange = f"{o.prefix}.{o.type}"
        self.queues = [f"{o.prefix}.q{i}" for i in range(o.queues)]

    def key_for(self, producer: int) -> str:
        if self.o.type == "direct":
            return self.queues[producer % len(self.queues)]
        return TOPIC_KEY if self.o.type == "topic" else ""

    def expected(self, published: list[int]) -> int:
        """Messages the consumers should get, given what each producer published."""
        n = len(self.queues)
        consumed_queues = {j % n for j in range(self.o.consumers)}
        if self.o.type == "direct":
            return sum(c for i, c in enumerate(published) if i % n in consumed_queues)
        return sum(published) * len(consumed_queues)

    def _admin(self, url: AmqpUrl, f: Any) -> None:
        """Run f(wire, channel) for each step; a step the broker refuses closes the
        channel, so the next one gets a fresh channel."""
        w = Wire(url, name="warren perf admin")
        try:
            ch = 1
            w.open_channel(ch)
            for step, strict in f():
                try:
                    step(w, ch)
                except PerfError:
                    if strict:
                        raise
                    ch += 1
                    w.open_channel(ch)
        finally:
            w.close()

    def setup(self, url: AmqpUrl) -> None:
        o = self.o

        def steps() -> Any:
            for q in self.queues:  # leftovers of an aborted run
                yield (lambda w, ch, q=q: w.queue_delete(ch, q)), False
            yield (lambda w, ch: w.exchange_delete(ch, self.exchange)), False
            yield (lambda w, ch: w.exchange_declare(ch, self.exchange, o.type, o.persistent)), True
            for q in self.queues:
                yield (lambda w, ch, q=q: w.queue_declare(ch, q, o.persistent)), True
                keys = {"direct": [q], "fanout": [""],
                        "topic": topic_patterns(o.topic_bindings)}[o.type]
                for k in keys:
                    yield (lambda w, ch, q=q, k=k: w.queue_bind(ch, q, self.exchange, k)), True

        self._admin(url, steps)

    def teardown(self, url: AmqpUrl) -> None:
        def steps() -> Any:
            for q in self.queues:
                yield (lambda w, ch, q=q: w.queue_delete(ch, q)), False
            yield (lambda w, ch: w.exchange_delete(ch, self.exchange)), False

        self._admin(url, steps)


# ---------------------------------------------------------------- run


def _proc_cpu(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _say(o: argparse.Namespace, text: str) -> None:
    if not o.quiet:
        print(text, file=sys.stderr, flush=True)


def run(o: argparse.Namespace) -> dict[str, Any]:
    """Run one test as the options say; return the result (what --json prints)."""
    url = AmqpUrl.parse(o.uri)
    topo = Topology(o)
    errors: list[str] = []
    topo.setup(url)
    clients: list[ClientSpec] = []
    for i in range(o.producers):
        clients.append(ClientSpec(
            index=len(clients), role="producer", url=url, exchange=topo.exchange,
            routing_key=topo.key_for(i), size=o.size, persistent=o.persistent,
            confirm=o.confirm, rate=o.rate, count=o.pmessages, batch_bytes=o.batch_bytes))
    for j in range(o.consumers):
        clients.append(ClientSpec(
            index=len(clients), role="consumer", url=url,
            queue=topo.queues[j % len(topo.queues)], prefetch=o.qos, autoack=o.autoack,
            ack_every=o.ack_every))
    nproc = o.processes or min(len(clients), max(2, os.cpu_count() or 1))
    nproc = max(1, min(nproc, len(clients)))
    ctx = mp.get_context("spawn")
    counters = ctx.RawArray("q", len(clients) * NSLOTS)
    control = ctx.Array("q", 4)
    results = ctx.Queue()
    groups = [clients[k::nproc] for k in range(nproc)]
    procs = [ctx.Process(target=run_worker, args=(g, counters, control, results),
                         name=f"warren-perf-{k}", daemon=True) for k, g in enumerate(groups)]
    prod_idx = [c.index for c in clients if c.role == "producer"]
    cons_idx = [c.index for c in clients if c.role == "consumer"]

    def total(idx: list[int], slot: int) -> int:
        return sum(counters[i * NSLOTS + slot] for i in idx)

    collected: list[dict[str, Any]] = []
    t_go = t_stop = t_end = time.monotonic()
    broker_cpu1 = None
    broker_cpu0 = _proc_cpu(o.broker_pid) if o.broker_pid else None
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + 30
        while control[K_READY] < len(clients):
            if time.monotonic() > deadline or not all(p.is_alive() for p in procs):
                raise PerfError("workers did not connect within 30 s")
            time.sleep(0.01)
        broker_cpu0 = _proc_cpu(o.broker_pid) if o.broker_pid else None
        t_go = time.monotonic()
        control[K_GO] = 1
        last = (t_go, 0, 0, 0)
        target = o.pmessages * o.producers
        while True:
            time.sleep(min(0.05, max(0.001, t_go + o.time - time.monotonic())))
            now = time.monotonic()
            pub, conf, cons = (total(prod_idx, C_PUBLISHED), total(prod_idx, C_CONFIRMED),
                               total(cons_idx, C_CONSUMED))
            if now - last[0] >= 0.999:
                dt = now - last[0]
                line = f"time {now - t_go:6.1f}s"
                if prod_idx:
                    line += f"  published {(pub - last[1]) / dt:9.0f} msg/s"
                if o.confirm:
                    line += f"  confirmed {(conf - last[2]) / dt:9.0f} msg/s"
                if cons_idx:
                    line += f"  consumed {(cons - last[3]) / dt:9.0f} msg/s"
                _say(o, line)
                last = (now, pub, conf, cons)
            if now - t_go >= o.time or (target and pub >= target) or not any(
                    p.is_alive() for p in procs):
                break
        t_stop = time.monotonic()
        control[K_STOP_PUB] = 1
        # drain: consumers catch up with what was published, confirms arrive
        drain_end = t_stop + o.drain
        stable_since, last_pub = time.monotonic(), -1
        while time.monotonic() < drain_end:
            pub_each = [counters[i * NSLOTS + C_PUBLISHED] for i in prod_idx]
            pub = sum(pub_each)
            if pub != last_pub:
                stable_since, last_pub = time.monotonic(), pub
            settled = time.monotonic() - stable_since > 0.2
            cons_ok = not cons_idx or total(cons_idx, C_CONSUMED) >= topo.expected(pub_each)
            conf_ok = not o.confirm or total(prod_idx, C_CONFIRMED) >= pub
            if settled and cons_ok and conf_ok:
                break
            time.sleep(0.02)
        control[K_STOP_CONS] = 1
        broker_cpu1 = _proc_cpu(o.broker_pid) if o.broker_pid else None
        t_end = time.monotonic()
        end = time.monotonic() + 15
        while len(collected) < len(clients) and time.monotonic() < end:
            try:
                collected.append(results.get(timeout=0.2))
            except queue_mod.Empty:
                if not any(p.is_alive() for p in procs) and results.empty():
                    break
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                errors.append(f"{p.name} did not stop; terminated")
            elif p.exitcode not in (0, None):
                errors.append(f"{p.name} exited with {p.exitcode}")
    finally:
        control[K_STOP_PUB] = control[K_STOP_CONS] = 1
        for p in procs:
            if p.is_alive():
                p.join(timeout=2)
            if p.is_alive():
                p.terminate()
        if not o.no_teardown:
            try:
                topo.teardown(url)
            except (OSError, PerfError) as exc:
                errors.append(f"teardown: {exc}")
    broker_cpu = None
    if broker_cpu0 is not None and broker_cpu1 is not None and t_end > t_go:
        broker_cpu = round(100 * (broker_cpu1 - broker_cpu0) / (t_end - t_go), 1)
    return _report(o, url, topo, collected, errors, counters, prod_idx, cons_idx,
                   t_go, t_stop, broker_cpu)


def _report(o: argparse.Namespace, url: AmqpUrl, topo: Topology, collected: list[dict[str, Any]],
            errors: list[str], counters: Any, prod_idx: list[int], cons_idx: list[int],
            t_go: float, t_stop: float, broker_cpu: float | None) -> dict[str, Any]:
    hist = [0] * HIST_BUCKETS
    chist = [0] * HIST_BUCKETS
    last_recv = t_go
    cpu_by_pid: dict[int, float] = {}
    roles: dict[int, list[str]] = {}
    for r in collected:
        if r.get("error"):
            errors.append(r["error"])
        for i, c in r.get("hist", {}).items():
            hist[i] += c
        for i, c in r.get("confirm_hist", {}).items():
            chist[i] += c
        if r.get("last"):
            last_recv = max(last_recv, r["last"])
        if "pid" in r:
            roles.setdefault(r["pid"], []).append(f"{r['role'][0]}{r['index']}")
            cpu_by_pid[r["pid"]] = r["worker_cpu_pct"]
    # CPU% of each worker process, named by the clients it ran (p0 = producer 0)
    cpu = {"+".join(roles[pid]): v for pid, v in cpu_by_pid.items()}
    missing = len(prod_idx) + len(cons_idx) - len(collected)
    if missing > 0:
        errors.append(f"{missing} client(s) reported no result")
    # counters are the truth even for a client whose worker died
    published = sum(counters[i * NSLOTS + C_PUBLISHED] for i in prod_idx)
    confirmed = sum(counters[i * NSLOTS + C_CONFIRMED] for i in prod_idx)
    nacked = sum(counters[i * NSLOTS + C_NACKED] for i in prod_idx)
    consumed = sum(counters[i * NSLOTS + C_CONSUMED] for i in cons_idx)
    # a producer that stopped by itself (-C) ended before the main loop noticed
    ends = [r["ended"] for r in collected if r.get("role") == "producer" and r.get("ended")]
    pub_time = max((max(ends) if ends and len(ends) == len(prod_idx) else t_stop) - t_go, 1e-9)
    conf_ends = [r["confirmed_at"] for r in collected if r.get("confirmed_at")]
    conf_time = max(max(conf_ends) - t_go, 1e-9) if conf_ends else pub_time
    cons_time = last_recv - t_go if last_recv - t_go > 0.001 else pub_time
    lat = hist_percentiles(hist, PERCENTILES)
    res: dict[str, Any] = {
        "tool": "warren perf", "label": o.label, "url": url.safe(),
        "producers": o.producers, "consumers": o.consumers, "queues": o.queues,
        "exchange_type": o.type, "size": o.size, "persistent": o.persistent,
        "confirm": o.confirm, "prefetch": o.qos, "autoack": o.autoack,
        "ack_every": 0 if o.autoack else o.ack_every, "rate_limit": o.rate,
        "duration_s": round(pub_time, 3),
        "published": published, "confirmed": confirmed, "nacked": nacked,
        "consumed": consumed,
        "expected": topo.expected([counters[i * NSLOTS + C_PUBLISHED] for i in prod_idx])
        if cons_idx else 0,
        "publish_rate": round(published / pub_time, 1),
        "confirm_rate": round(confirmed / conf_time, 1) if o.confirm else None,
        "consume_rate": round(consumed / cons_time, 1) if cons_idx else None,
        "latency_us": lat,
        "confirm_latency_us": hist_percentiles(chist, PERCENTILES) if o.confirm else {},
        "worker_cpu_pct": cpu,
        "broker_cpu_pct": broker_cpu,
        "errors": len(errors), "error_msgs": errors[:10],
    }
    # amqpbench / table.py field names
    res["sent"], res["received"] = published, consumed
    return res


def format_table(r: dict[str, Any]) -> str:
    def rate(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    def lat(d: dict[str, float]) -> str:
        if not d:
            return "-"
        return "  ".join(f"{k} {d[k] / 1000:.3f}" for k in ("p50", "p75", "p95", "p99", "max")
                         if k in d) + f"  (n={d.get('n', 0)})"

    head = (f"warren perf  {r['url']}  {r['producers']} producer(s), {r['consumers']} "
            f"consumer(s), {r['size']} B, {r['exchange_type']}, {r['queues']} queue(s)"
            + (", persistent" if r["persistent"] else "")
            + (f", confirm {r['confirm']}" if r["confirm"] else "")
            + (f", prefetch {r['prefetch']}" if r["prefetch"] else "")
            + ("" if not r["consumers"] else
               ", autoack" if r["autoack"] else f", ack every {r['ack_every']}")
            + (f", rate {r['rate_limit']:g}/s" if r["rate_limit"] else "")
            + f", {r['duration_s']:.1f} s")
    rows = [
        ("", "messages", "msg/s"),
    ]
    if r["producers"]:
        rows.append(("published", f"{r['published']:,}", rate(r["publish_rate"])))
    if r["confirm"]:
        rows.append(("confirmed", f"{r['confirmed']:,}", rate(r["confirm_rate"])))
        if r["nacked"]:
            rows.append(("nacked", f"{r['nacked']:,}", ""))
    if r["consumers"]:
        of = f" of {r['expected']:,}" if r["producers"] else ""
        rows.append(("consumed", f"{r['consumed']:,}{of}",
                     rate(r["consume_rate"])))
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    w2 = max(len(c) for _, _, c in rows)
    lines = [head] + [f"  {a:<{w0}}  {b:>{w1}}  {c:>{w2}}" for a, b, c in rows]
    if r["consumers"]:
        lines.append(f"  latency ms          {lat(r['latency_us'])}")
    if r["confirm"]:
        lines.append(f"  confirm latency ms  {lat(r['confirm_latency_us'])}")
    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in sorted(r["worker_cpu_pct"].items()))
    lines.append(f"  generator CPU       {cpu or '-'}"
                 + (f"; broker CPU {r['broker_cpu_pct']:.0f}%"
                    if r["broker_cpu_pct"] is not None else ""))
    lines.append("  errors              " + ("; ".join(r["error_msgs"]) or "none"))
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    o = parse(argv)
    try:
        r = run(o)
    except (OSError, PerfError) as exc:
        print(f"warren perf: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    print(json.dumps(r) if o.json else format_table(r), flush=True)
    if r["errors"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
