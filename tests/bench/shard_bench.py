"""Figures for sharded vhosts on a three-node cluster (never collected by pytest):

1. aggregate: one vhost of 3 shards against one of 1 shard, same cluster, same run,
   alternating: 6 durable queues, 6 publishers with confirms (persistent 1 KB, 1000 in
   flight) and 6 consumers (manual ack every 100, prefetch 1000), spread over the three
   nodes (one amqpbench per node, its queues declared through that node, so a sharded
   vhost's go to that node's shard: client-local).  Confirmed msg/s summed over the three.
2. failover: producers of two shards publish while the third shard's owner is killed (kill
   -9; not the Raft leader): each producer's longest gap between confirms around the
   failover, at a set rate and at full speed.
3. through a non-owner: publish->confirm latency (p50, p99) of single persistent messages
   with pika, to a queue of another node's shard, against the same on that shard's owner.

usage: python3 tests/bench/shard_bench.py [--duration 10] [--rounds 2] [--parts 1,2,3]
(needs ~/.cache/warren-bench/bin/amqpbench: ../shared/bench/build.sh)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import pika  # noqa: E402

from tests.cluster.conftest import Cluster  # noqa: E402

AMQPBENCH = Path(os.environ.get("AMQPBENCH", Path.home() / ".cache/warren-bench/bin/amqpbench"))
# the failover figure: tick often enough to see a 50 ms gap, and how long after the kill
TICK = "5ms"
FAILOVER_WINDOW = 5.0
S3_LIKE = ["-producers", "2", "-consumers", "2", "-queues", "2", "-persistent",
           "-confirm", "1000", "-size", "1024", "-ack-every", "100", "-prefetch", "1000"]


def make_vhost(cluster: Cluster, name: str, shard_count: int) -> None:
    n1 = cluster.nodes[0]
    code, body = cluster.http(n1, "PUT", f"/api/cluster/vhosts/{name}", {"shards": shard_count})
    assert code in (201, 204), body
    code, body = cluster.http(n1, "PUT", f"/api/permissions/{name}/guest",
                              {"configure": ".*", "write": ".*", "read": ".*"})
    assert code in (201, 204), body

    def in_sync() -> bool:
        code, body = cluster.http(n1, "GET", f"/api/cluster/vhosts/{name}")
        units = (body.get("shards") or [body]) if code == 200 else []
        return len(units) == shard_count and all(len(u["in_sync"]) == 2 for u in units)
    cluster.wait_until(in_sync, timeout=60, what=f"vhost {name}'s copies in sync")


def placement(cluster: Cluster, name: str) -> list[dict]:
    code, body = cluster.http(cluster.nodes[0], "GET", f"/api/cluster/vhosts/{name}")
    assert code == 200, body
    return body.get("shards") or [body]


def amqpbench(node, vhost: str, prefix: str, duration: float, extra: list[str],
              pids: str, stderr: Any = subprocess.DEVNULL) -> subprocess.Popen:
    url = f"amqp://guest:guest@127.0.0.1:{node.amqp_port}/{quote(vhost, safe='')}"
    return subprocess.Popen(
        [str(AMQPBENCH), "-url", url, "-duration", f"{duration}s", "-prefix", prefix,
         "-extra-pids", pids, *S3_LIKE, *extra],
        stdout=subprocess.PIPE, stderr=stderr, text=True)


def result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=180)
    return json.loads(out.strip().splitlines()[-1])


def aggregate(cluster: Cluster, vhost: str, duration: float, pids: str) -> dict:
    procs = [amqpbench(node, vhost, f"{vhost}-{i}", duration, [], pids)
             for i, node in enumerate(cluster.nodes)]
    runs = [result(p) for p in procs]
    confirmed = sum(r["confirmed"] for r in runs)
    cpu: dict[str, float] = {}  # each node's CPU% over the run (the three agree; averaged)
    for r in runs:
        for name, pct in (r.get("extra_cpu_pct") or {}).items():
            cpu[name] = cpu.get(name, 0.0) + pct / len(runs)
    return {"confirmed_per_s": round(confirmed / duration),
            "consumed_per_s": round(sum(r["consume_rate"] for r in runs)),
            "nacked": sum(r["nacked"] for r in runs),
            "errors": sum(r["errors"] for r in runs), "cpu": cpu}


def part_aggregate(cluster: Cluster, duration: float, rounds: int, pids: str) -> None:
    make_vhost(cluster, "one", 1)
    make_vhost(cluster, "three", 3)
    print("shards of 'three':",
          ", ".join(f"{u['shard']}@{u['owner']}" for u in placement(cluster, "three")))
    figures: dict[str, list[int]] = {"one": [], "three": []}
    # what each would do with a core per node: the busiest node's CPU bounds the rate
    projected: dict[str, list[float]] = {"one": [], "three": []}
    for r in range(rounds):
        for vhost in ("one", "three"):
            f = aggregate(cluster, vhost, duration, pids)
            figures[vhost].append(f["confirmed_per_s"])
            busiest = max(f["cpu"].values()) if f["cpu"] else 0.0
            if busiest:
                projected[vhost].append(f["confirmed_per_s"] * 100 / busiest)
            print(f"  round {r + 1} {vhost:5s}: confirmed {f['confirmed_per_s']}/s, consumed "
                  f"{f['consumed_per_s']}/s, nacked {f['nacked']}, errors {f['errors']}, node "
                  "CPU% " + " ".join(f"{n} {p:.0f}" for n, p in sorted(f["cpu"].items())))
    one, three = statistics.median(figures["one"]), statistics.median(figures["three"])
    print(f"aggregate confirmed msg/s: 1 shard {one:.0f}, 3 shards {three:.0f}, "
          f"ratio {three / one:.2f}")
    if projected["one"] and projected["three"]:
        p1, p3 = statistics.median(projected["one"]), statistics.median(projected["three"])
        print(f"with a core per node (the busiest node's CPU at 100%): 1 shard {p1:.0f}/s, "
              f"3 shards {p3:.0f}/s, ratio {p3 / p1:.2f}")


def longest_gap(ticks: str, lo: float, hi: float) -> tuple[float, float]:
    """From amqpbench's -tick lines (one producer per process; ``confirmed`` is a running
    total): the longest time between two ticks that each saw new confirms, for gaps
    ending between wall times ``lo`` and ``hi`` (seconds, and where it started)."""
    best, last, seen = (0.0, 0.0), None, 0
    for line in ticks.splitlines():
        m = re.match(r"tick wall=([\d.]+) .*? confirmed=(\d+)", line)
        if not m or int(m.group(2)) <= seen:
            continue
        wall, seen = float(m.group(1)), int(m.group(2))
        if last is not None and lo <= wall <= hi and wall - last > best[0]:
            best = (wall - last, last)
        last = wall
    return best


def part_failover(cluster: Cluster, duration: float, pids: str, rate: str,
                  rounds: int) -> None:
    """The other shards' producers while one shard's owner is killed: one amqpbench per
    producer (1 producer, 1 consumer, its own queue on its node's shard), ticking every
    TICK, so each producer's gaps are seen apart; the gap counted is the longest one
    ending in the second before the kill to FAILOVER_WINDOW after it (amqpbench's own
    max_confirm_gap_ms covers the whole run, start-up included, and is printed too)."""
    for r in range(rounds):
        vhost = f"fo{rate or 'max'}{r}"
        make_vhost(cluster, vhost, 3)
        units = placement(cluster, vhost)
        # the leader every node names (one node's view can lag a hand-off): the victim must
        # not be it, or the figure measures an election too
        def one_leader() -> bool:
            views = {cluster.leader(n) for n in cluster.nodes}
            return len(views) == 1 and None not in views
        cluster.wait_until(one_leader, what="one Raft leader seen by all")
        leader = cluster.leader(cluster.nodes[0])
        victim = next(n for n in cluster.nodes if n is not leader)
        others = [n for n in cluster.nodes if n is not victim]
        print(f"  {rate or 'full speed'} msg/s per producer: killing {victim.name} (owns "
              f"shard {[u['shard'] for u in units if u['owner'] == victim.name]}); Raft "
              f"leader {leader.name if leader else '?'}")
        one = ["-producers", "1", "-consumers", "1", "-queues", "1", "-tick", TICK,
               *(["-rate", rate] if rate else [])]
        # ticks go to files: a pipe nobody reads yet would fill and hold the ticker
        procs = []
        for node in others:
            for i in range(2):
                log = tempfile.TemporaryFile("w+")
                procs.append((node, log, amqpbench(node, vhost, f"fo-{node.name[:2]}-{i}",
                                                   duration, one, pids, stderr=log)))
        time.sleep(duration / 2)
        killed = time.time()
        victim.kill()
        print(f"    killed at {time.strftime('%H:%M:%S', time.localtime(killed))}"
              f".{int(killed % 1 * 1000):03d} (the nodes' log clock)")
        for node, log, proc in procs:
            out, _ = proc.communicate(timeout=180)
            log.seek(0)
            ticks = log.read()
            log.close()
            res = json.loads(out.strip().splitlines()[-1])
            gap, at = longest_gap(ticks, killed - 1, killed + FAILOVER_WINDOW)
            # the same producer's longest gap with no fault: this machine's noise floor
            floor, _ = longest_gap(ticks, killed - duration / 2 + 1, killed - 0.2)
            print(f"    producer on {node.name} (its own shard): confirmed {res['confirmed']}, "
                  f"nacked {res['nacked']}, errors {res['errors']}; longest gap around the "
                  f"failover {gap * 1000:.0f} ms (at {at - killed:+.2f} s), before the "
                  f"kill {floor * 1000:.0f} ms, whole run "
                  f"{res.get('max_confirm_gap_ms', 0):.0f} ms (at "
                  f"{res.get('max_confirm_gap_start_unix', killed) - killed:+.2f} s)")
        victim.start()
        victim.wait(90)
        cluster.wait_until(lambda v=vhost: all(len(u["in_sync"]) == 2
                                               for u in placement(cluster, v)),
                           timeout=90, what="copies back in sync")


def confirm_latency(port: int, vhost: str, queue: str, n: int) -> tuple[float, float]:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, vhost))
    ch = conn.channel()
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)
    lat = []
    for i in range(n):
        t = time.perf_counter()
        ch.basic_publish("", queue, str(i).encode(), props, mandatory=True)
        lat.append((time.perf_counter() - t) * 1000)
    conn.close()
    lat.sort()
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99)]


def part_non_owner(cluster: Cluster, n: int, rounds: int) -> None:
    make_vhost(cluster, "far", 3)
    units = placement(cluster, "far")
    owner = cluster.by_name(units[1]["owner"])
    other = next(node for node in cluster.nodes if node.name != owner.name)
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", owner.amqp_port,
                                                             "far"))
    conn.channel().queue_declare("lat", durable=True)  # client-local: the owner's shard
    conn.close()
    for r in range(rounds):
        for label, node in (("owner", owner), ("non-owner", other)):
            p50, p99 = confirm_latency(node.amqp_port, "far", "lat", n)
            print(f"  round {r + 1} via {label:9s} ({node.name}): publish->confirm p50 "
                  f"{p50:.2f} ms, p99 {p99:.2f} ms")
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", owner.amqp_port,
                                                             "far"))
    depth = conn.channel().queue_declare("lat", passive=True).method.message_count
    conn.close()
    print(f"  messages in the queue afterwards: {depth} (expected {2 * rounds * n})")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--latency-messages", type=int, default=2000)
    p.add_argument("--parts", default="1,2,3")
    p.add_argument("--failover-rates", default="1000,",
                   help="part 2's msg/s per producer, comma-separated ('' = full speed)")
    p.add_argument("--no-sync", action="store_true",
                   help="stores commit without fsync (tells the disk's share from the CPU's)")
    a = p.parse_args()
    parts = set(a.parts.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp), **({"sync": "false"} if a.no_sync else {})).start()
        try:
            cluster.wait_until(lambda: len(cluster.status(cluster.nodes[0])["nodes"]) == 3
                               and all(n["running"] for n in
                                       cluster.status(cluster.nodes[0])["nodes"]),
                               what="every member running")
            pids = ",".join(f"{n.name.split('@')[0]}={n.proc.pid}" for n in cluster.nodes)
            if "1" in parts:
                part_aggregate(cluster, a.duration, a.rounds, pids)
            if "3" in parts:
                part_non_owner(cluster, a.latency_messages, a.rounds)
            if "2" in parts:
                for rate in a.failover_rates.split(","):
                    part_failover(cluster, a.duration, pids, rate, a.rounds)
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
