"""`warren perf` end to end: a short run against the test node must account for every
message it published and report latency percentiles."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.nodeproc import REPO


def test_perf_publishes_and_consumes_everything(node):
    out = subprocess.run(
        [sys.executable, "-m", "node", "perf", "-h", node.url, "-x", "1", "-y", "1",
         "-z", "2", "-c", "100", "-q", "200", "-A", "10", "-r", "2000", "--json", "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["errors"] == 0, r["error_msgs"]
    assert r["published"] > 0
    assert r["published"] == r["confirmed"] == r["consumed"]
    lat = r["latency_us"]
    for p in ("p50", "p95", "p99"):
        assert lat[p] >= 0
    assert lat["n"] == r["consumed"]
    assert r["confirm_latency_us"]["p50"] >= 0
