"""Figures for the three-node cluster (never collected by pytest):

* durable queue.declare latency (p50, p99) and declares per second, with pika, from a client
  on the vhost's owner and from one on another node (forwarded);
* message rates through a forwarded connection against a direct one, same run, with the
  shared amqpbench generator (S1 and S2 flags), alternating direct / forwarded.

usage: python3 tests/bench/cluster_bench.py [--declares 500] [--duration 8] [--rounds 2]
(needs ~/.cache/warren-bench/bin/amqpbench: ../shared/bench/build.sh)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import pika  # noqa: E402

from tests.cluster.conftest import Cluster  # noqa: E402

AMQPBENCH = Path(os.environ.get("AMQPBENCH", Path.home() / ".cache/warren-bench/bin/amqpbench"))
SCENARIOS = {
    "S1": ["-producers", "1", "-consumers", "1", "-size", "16", "-autoack"],
    "S2": ["-producers", "1", "-consumers", "1", "-size", "1024", "-ack-every", "100",
           "-prefetch", "1000"],
}


def declare_latency(port: int, n: int, prefix: str) -> dict:
    c = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{port}/%2F"))
    ch = c.channel()
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        ch.queue_declare(f"{prefix}{i}", durable=True)
        lat.append((time.perf_counter() - t) * 1000)
    total = time.perf_counter() - t0
    for i in range(n):
        ch.queue_delete(f"{prefix}{i}")
    c.close()
    lat.sort()
    return {"p50_ms": round(lat[len(lat) // 2], 2), "p99_ms": round(lat[int(len(lat) * 0.99)], 2),
            "per_s": round(n / total)}


def bench(port: int, scenario: str, duration: int) -> dict:
    out = subprocess.run([str(AMQPBENCH), "-url", f"amqp://guest:guest@127.0.0.1:{port}/",
                          "-duration", f"{duration}s", "-label", scenario,
                          *SCENARIOS[scenario]], capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--declares", type=int, default=500)
    p.add_argument("--duration", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp)).start()
        try:
            owner = cluster.owner_of("/")
            other = next(n for n in cluster.nodes if n is not owner)
            leader = cluster.leader(owner)
            print(f"owner of '/': {owner.name}; raft leader: {leader.name if leader else '?'};"
                  f" forwarded entry: {other.name}")
            for label, node in (("owner", owner), ("forwarded", other)):
                r = declare_latency(node.amqp_port, a.declares, f"lat-{label}-")
                print(f"durable queue.declare via {label:9s}: p50 {r['p50_ms']} ms, "
                      f"p99 {r['p99_ms']} ms, {r['per_s']} declares/s ({a.declares} sequential)")
            for scenario in SCENARIOS:
                runs: dict[str, list[float]] = {"direct": [], "forwarded": []}
                for _ in range(a.rounds):
                    for label, node in (("direct", owner), ("forwarded", other)):
                        r = bench(node.amqp_port, scenario, a.duration)
                        runs[label].append(r["consume_rate"])
                        print(f"  {scenario} {label:9s}: publish {r['publish_rate']:.0f}/s, "
                              f"consume {r['consume_rate']:.0f}/s, errors {r['errors']}")
                d = statistics.median(runs["direct"])
                f = statistics.median(runs["forwarded"])
                print(f"{scenario}: direct {d:.0f} msg/s, forwarded {f:.0f} msg/s, "
                      f"forwarded/direct {f / d:.2f}")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
