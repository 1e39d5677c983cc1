"""TLS cost on one node (never collected by pytest): TLS handshake time and AMQP connection
open time, plain vs AMQPS, and S1 (1 producer -> 1 queue -> 1 consumer, 16 B, auto-ack)
through the shared Go load generator.

amqpbench speaks plain AMQP only, so S1 runs through socat on both sides of the comparison:
plain = amqpbench -> socat (TCP relay) -> 5672; AMQPS = amqpbench -> socat (TLS client) ->
5671.  The relay's own cost is in both; the difference is TLS (the node's and socat's).

usage: python3 tests/bench/tls_bench.py [--duration 10] [--rounds 2]"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import pika  # noqa: E402

from tests.nodeproc import NodeProcess, free_port, wait_port  # noqa: E402
from tests.tlscerts import make_pki  # noqa: E402

AMQPBENCH = Path(os.environ.get("BENCH_WORK", Path.home() / ".cache/warren-bench")) \
    / "bin/amqpbench"


def ms(samples: list[float]) -> str:
    s = sorted(samples)
    return (f"median {statistics.median(s) * 1e3:.2f} ms, "
            f"p99 {s[min(len(s) - 1, int(len(s) * 0.99))] * 1e3:.2f} ms")


def handshakes(port: int, ctx: ssl.SSLContext | None, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as s:
            if ctx is not None:
                with ctx.wrap_socket(s, server_hostname="localhost"):
                    out.append(time.perf_counter() - t)
            else:
                out.append(time.perf_counter() - t)
    return out


def amqp_opens(params: pika.ConnectionParameters, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        c = pika.BlockingConnection(params)
        out.append(time.perf_counter() - t)
        c.close()
    return out


def s1(port: int, pid: int, duration: int) -> dict:
    r = subprocess.run([str(AMQPBENCH), "-url", f"amqp://guest:guest@127.0.0.1:{port}/",
                        "-producers", "1", "-consumers", "1", "-size", "16", "-autoack",
                        "-duration", f"{duration}s", "-broker-pid", str(pid), "-label", "S1"],
                       capture_output=True, text=True, timeout=duration + 60)
    line = [x for x in r.stdout.splitlines() if x.startswith("{")]
    if not line:
        raise RuntimeError(r.stdout + r.stderr)
    return json.loads(line[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        pki = make_pki(Path(d) / "pki")
        amqps = free_port()
        node = NodeProcess(Path(d) / "data", tls_cert=pki["server"], tls_key=pki["server_key"],
                           tls_ca=pki["ca"], amqps_port=str(amqps), log_level="warning")
        node.start()
        wait_port(amqps, 30, node.proc)
        assert node.proc is not None
        relays = []
        try:
            ctx = ssl.create_default_context(cafile=pki["ca"])
            handshakes(amqps, ctx, 20)  # warm up
            print("TCP connect:              ", ms(handshakes(node.amqp_port, None, 300)))
            print("TCP connect + TLS 1.3 handshake (ECDSA P-256):", ms(handshakes(amqps, ctx, 300)))
            plain = pika.ConnectionParameters("127.0.0.1", node.amqp_port)
            tls = pika.ConnectionParameters("localhost", amqps,
                                            ssl_options=pika.SSLOptions(ctx, "localhost"))
            print("AMQP connection open, plain:", ms(amqp_opens(plain, 100)))
            print("AMQP connection open, AMQPS:", ms(amqp_opens(tls, 100)))
            p_plain, p_tls = free_port(), free_port()
            relays.append(subprocess.Popen(
                ["socat", f"TCP-LISTEN:{p_plain},fork,reuseaddr,nodelay",
                 f"TCP:127.0.0.1:{node.amqp_port},nodelay"]))
            relays.append(subprocess.Popen(
                ["socat", f"TCP-LISTEN:{p_tls},fork,reuseaddr,nodelay",
                 f"OPENSSL:127.0.0.1:{amqps},cafile={pki['ca']},commonname=localhost,nodelay"]))
            wait_port(p_plain)
            wait_port(p_tls)
            results: dict[str, list[float]] = {"plain": [], "amqps": []}
            for _ in range(a.rounds):
                for label, port in (("plain", p_plain), ("amqps", p_tls)):
                    r = s1(port, node.proc.pid, a.duration)
                    rate = float(r.get("consume_rate") or r.get("received_per_sec")
                                 or r.get("recv_rate") or 0)
                    results[label].append(rate)
                    print(f"S1 {label:5s}: {json.dumps(r)}")
            for label, rates in results.items():
                print(f"S1 {label}: consume msg/s per run {[round(x) for x in rates]}")
        finally:
            for p in relays:
                p.terminate()
            node.stop()


if __name__ == "__main__":
    main()
