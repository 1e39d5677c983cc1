"""The RabbitMQ side of shard_bench's failover figure (never collected by pytest): quorum
queues on a three-node RabbitMQ cluster, producers of queues led by two nodes, the third
node killed (kill -9) halfway; each producer's longest gap between confirms around the
kill, measured as shard_bench part 2 measures WarrenMQ's (one amqpbench per producer,
5 ms ticks).

The cluster is yours to start (e.g. the bench kit's anchors/rabbitmq-cluster.sh: three
nodes on AMQP ports 5861-5863); give the two surviving nodes' ports and the pid of the
node to kill (it holds a follower of every queue):

  python3 tests/bench/rabbit_failover_gap.py --ports 5861,5862 --kill-pid PID [--rate 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.shard_bench import (  # noqa: E402
    AMQPBENCH,
    FAILOVER_WINDOW,
    S3_LIKE,
    TICK,
    longest_gap,
)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ports", required=True, help="AMQP ports of the two surviving nodes")
    p.add_argument("--kill-pid", type=int, required=True)
    p.add_argument("--rate", default="", help="msg/s per producer ('' = full speed)")
    p.add_argument("--duration", type=float, default=10)
    a = p.parse_args()
    one = ["-producers", "1", "-consumers", "1", "-queues", "1", "-tick", TICK,
           "-queue-type", "quorum", *(["-rate", a.rate] if a.rate else [])]
    procs = []
    for port in a.ports.split(","):
        for i in range(2):
            log = tempfile.TemporaryFile("w+")
            url = f"amqp://guest:guest@127.0.0.1:{port}/"
            procs.append((port, log, subprocess.Popen(
                [str(AMQPBENCH), "-url", url, "-duration", f"{a.duration}s",
                 "-prefix", f"gap-{port}-{i}-{os.getpid()}", *S3_LIKE, *one],
                stdout=subprocess.PIPE, stderr=log, text=True)))
    time.sleep(a.duration / 2)
    killed = time.time()
    os.kill(a.kill_pid, signal.SIGKILL)
    print(f"RabbitMQ quorum queues, {a.rate or 'full speed'} msg/s per producer: killed "
          f"pid {a.kill_pid}")
    for port, log, proc in procs:
        out, _ = proc.communicate(timeout=180)
        res = json.loads(out.strip().splitlines()[-1])
        log.seek(0)
        gap, at = longest_gap(log.read(), killed - 1, killed + FAILOVER_WINDOW)
        print(f"    producer on :{port} (its queue led there): confirmed {res['confirmed']}, "
              f"nacked {res['nacked']}, errors {res['errors']}; longest gap around the "
              f"failover {gap * 1000:.0f} ms (at {at - killed:+.2f} s), whole run "
              f"{res.get('max_confirm_gap_ms', 0):.0f} ms")


if __name__ == "__main__":
    main()
