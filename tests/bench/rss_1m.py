#!/usr/bin/env python3
"""Memory of a broker holding a million persistent messages: WarrenMQ vs RabbitMQ.

usage: python3 tests/bench/rss_1m.py [--messages 1000000] [--size 1024] [--confirm 1000]
                                     [--rabbit-url amqp://guest:guest@127.0.0.1:5673/]
                                     [--no-rabbit] [--json]

For each broker: publish --messages persistent messages of --size bytes with publisher
confirms (at most --confirm unconfirmed) into one durable queue, with no consumer, using
`warren perf` as a library (pre-encoded frames, one producer process); wait until every
publish is confirmed, let the broker settle for --settle seconds, then read VmRSS,
VmHWM (peak), RssAnon and RssFile from /proc/<pid>/status.  The queue is deleted
afterwards.

WarrenMQ is started from this checkout on free ports with a fresh data dir (removed at
the end).  RabbitMQ is the bench node of ../shared/bench/anchors/rabbitmq.sh: used
if it listens at --rabbit-url, otherwise started (and stopped at the end); its pid is
`anchors/rabbitmq.sh pid`.  RssFile matters for WarrenMQ: LMDB is a memory map, so
pages of the message store the kernel keeps cached count in VmRSS but can be dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from node.tools import perf  # noqa: E402
from node.tools.perf.client import AmqpUrl  # noqa: E402
from tests.nodeproc import NodeProcess  # noqa: E402

RABBIT_SH = Path(os.environ.get("BENCH_DIR", REPO.parent / "shared/bench")) / "anchors/rabbitmq.sh"


def status(pid: int) -> dict[str, int]:
    """Memory lines of /proc/<pid>/status, in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, val = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(val.split()[0])
    return out


def listening(url: str) -> bool:
    u = AmqpUrl.parse(url)
    try:
        with socket.create_connection((u.host, u.port), timeout=1):
            return True
    except OSError:
        return False


def measure(name: str, url: str, pid: int, a: argparse.Namespace) -> dict[str, Any]:
    print(f"# {name} (pid {pid}): publishing {a.messages:,} x {a.size} B persistent, "
          f"confirm window {a.confirm}", file=sys.stderr, flush=True)
    before = status(pid)
    o = perf.parse(["-h", url, "-x", "1", "-y", "0", "-s", str(a.size), "--persistent",
                    "-c", str(a.confirm), "-C", str(a.messages), "-z", str(a.timeout),
                    "-D", "30", "--prefix", "perf.rss", "--no-teardown", "--quiet"])
    t0 = time.monotonic()
    r = perf.run(o)
    elapsed = time.monotonic() - t0
    time.sleep(a.settle)
    after = status(pid)
    try:
        perf.Topology(o).teardown(AmqpUrl.parse(url))
    except Exception as exc:  # noqa: BLE001 - report, keep going to the next broker
        print(f"# {name}: teardown failed: {exc}", file=sys.stderr)
    return {
        "broker": name, "pid": pid, "messages": a.messages, "size": a.size,
        "published": r["published"], "confirmed": r["confirmed"], "nacked": r["nacked"],
        "confirm_rate": r["confirm_rate"], "elapsed_s": round(elapsed, 1),
        "rss_before_kib": before.get("VmRSS"), "rss_kib": after.get("VmRSS"),
        "peak_rss_kib": after.get("VmHWM"), "rss_anon_kib": after.get("RssAnon"),
        "rss_file_kib": after.get("RssFile"), "errors": r["error_msgs"],
    }


def table(rows: list[dict[str, Any]]) -> str:
    def mib(v: int | None) -> str:
        return "-" if v is None else f"{v / 1024:,.0f}"

    out = ["| broker | confirmed | msg/s | RSS MiB | peak MiB | anon MiB | file MiB | "
           "RSS before MiB | errors |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['broker']} | {r['confirmed']:,} of {r['messages']:,} | "
            f"{r['confirm_rate'] or 0:,.0f} | {mib(r['rss_kib'])} | {mib(r['peak_rss_kib'])} | "
            f"{mib(r['rss_anon_kib'])} | {mib(r['rss_file_kib'])} | "
            f"{mib(r['rss_before_kib'])} | {'; '.join(r['errors']) or '-'} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--confirm", type=int, default=1000)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds before reading RSS")
    ap.add_argument("--timeout", type=float, default=1800, help="max publishing seconds")
    ap.add_argument("--rabbit-url", default="amqp://guest:guest@127.0.0.1:5673/")
    ap.add_argument("--no-rabbit", action="store_true", help="measure WarrenMQ only")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="warren-rss-"))
    node = NodeProcess(tmp / "data")
    try:
        node.start()
        assert node.proc is not None
        rows.append(measure("warren", node.url, node.proc.pid, a))
    finally:
        node.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    if not a.no_rabbit:
        started = False
        if not listening(a.rabbit_url):
            subprocess.run([str(RABBIT_SH), "start"], check=True, stdout=sys.stderr)
            started = True
        try:
            pid = int(subprocess.run([str(RABBIT_SH), "pid"], check=True, text=True,
                                     capture_output=True).stdout.strip())
            rows.append(measure("rabbitmq", a.rabbit_url, pid, a))
        finally:
            if started:
                subprocess.run([str(RABBIT_SH), "stop"], stdout=sys.stderr)

    if a.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print(table(rows))
    short = [r for r in rows if r["confirmed"] != a.messages or r["nacked"] or r["errors"]]
    for r in short:
        # the memory of a run that did not hold every message says nothing: fail loudly
        print(f"# {r['broker']}: only {r['confirmed']:,} of {a.messages:,} messages confirmed "
              f"({r['nacked']} nacked, errors: {'; '.join(r['errors']) or 'none'}): its RSS "
              "is not a figure for the full backlog", file=sys.stderr)
    return 1 if short else 0


if __name__ == "__main__":
    sys.exit(main())
