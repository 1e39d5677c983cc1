#!/usr/bin/env python3
"""Compare WarrenMQ with RabbitMQ from run_scenarios.sh result files (JSON lines).

usage: compare.py --warren W1.jsonl [W2.jsonl ...] --rabbit R1.jsonl [R2.jsonl ...] [--json]

One row per scenario: the median headline figure of each broker over its runs (the
runs themselves in brackets), the ratio WarrenMQ/RabbitMQ and the errors either side.
Headlines, as ../shared/bench/summarize.py defines them: consume msg/s (all
deliveries) for S1 S2 S4 S5; confirmed publish msg/s for S3 S3b; latency p50/p99 ms
for S6 (a ratio below 1 is better there); connections/s for S7.  A run marked "*"
had other processes take more than OTHER_MAX % CPU (default 15) while it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any

ORDER = ["S1", "S2", "S3", "S3b", "S4", "S5", "S6", "S7"]
OTHER_MAX = float(os.environ.get("OTHER_MAX", "15"))


def load(path: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                out[d.get("label", "?")] = d
    return out


def headline(label: str, d: dict[str, Any]) -> float | tuple[float, float] | None:
    if d.get("errors") and not d.get("sent") and not d.get("connections"):
        return None
    lat = d.get("latency_us") or {}
    if label == "S7":
        return d.get("conn_rate")
    if label == "S6":
        return (lat.get("p50", 0) / 1000.0, lat.get("p99", 0) / 1000.0)
    if label in ("S3", "S3b"):
        span = d.get("sent", 0) / d["publish_rate"] if d.get("publish_rate") else 0
        return d.get("confirmed", 0) / span if span else 0.0
    return d.get("consume_rate")


def fmt(label: str, v: Any) -> str:
    if v is None:
        return "n/a"
    if label == "S6":
        return f"{v[0]:.2f}/{v[1]:.1f} ms"
    return f"{v / 1000:.1f}k" if v >= 10000 else f"{v:.0f}"


def median(label: str, vals: list[Any]) -> Any:
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    if label == "S6":
        return (statistics.median(v[0] for v in vals), statistics.median(v[1] for v in vals))
    return statistics.median(vals)


def ratio(label: str, w: Any, r: Any) -> str:
    if w is None or r is None:
        return "n/a"
    if label == "S6":
        return "/".join(f"{a / b:.2f}" if b else "n/a" for a, b in zip(w, r, strict=True))
    return f"{w / r:.2f}" if r else "n/a"


def cell(label: str, runs: list[dict[str, Any] | None]) -> tuple[Any, str, str]:
    vals, shown, errs = [], [], []
    for d in runs:
        if d is None:
            shown.append("missing")
            continue
        v = headline(label, d)
        vals.append(v)
        busy = (d.get("other_cpu_pct") or 0) > OTHER_MAX
        shown.append(fmt(label, v) + ("*" if busy else ""))
        if d.get("errors"):
            errs.append(f"{d['errors']}: " + "; ".join(d.get("error_msgs") or [])[:80])
    med = median(label, vals)
    text = fmt(label, med)
    if len(shown) > 1:
        text += " [" + ", ".join(shown) + "]"
    return med, text, " / ".join(errs)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warren", nargs="+", required=True, help="WarrenMQ result files")
    ap.add_argument("--rabbit", nargs="+", required=True, help="RabbitMQ result files")
    ap.add_argument("--json", action="store_true", help="one JSON object per scenario")
    a = ap.parse_args(argv)
    wr = [load(p) for p in a.warren]
    rr = [load(p) for p in a.rabbit]
    labels = [s for s in ORDER if any(s in f for f in wr + rr)]
    labels += sorted({k for f in wr + rr for k in f} - set(labels))
    rows = []
    for s in labels:
        wm, wt, we = cell(s, [f.get(s) for f in wr])
        rm, rt, re_ = cell(s, [f.get(s) for f in rr])
        rows.append({"scenario": s, "warren": wm, "rabbit": rm, "ratio": ratio(s, wm, rm),
                     "warren_runs": wt, "rabbit_runs": rt,
                     "errors": "; ".join(x for x in (we and f"warren {we}",
                                                     re_ and f"rabbit {re_}") if x)})
    if a.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print("| scenario | warren | rabbit | warren/rabbit | errors |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scenario']} | {r['warren_runs']} | {r['rabbit_runs']} | {r['ratio']} "
              f"| {r['errors'] or '-'} |")
    print("\nratio > 1: WarrenMQ faster, except S6 (latency p50/p99: < 1 is better)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
