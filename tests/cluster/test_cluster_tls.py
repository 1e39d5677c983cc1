"""Between nodes: with --cluster-tls the cluster port (forwarded client
connections, and any other session on it) speaks only mutual TLS with the cluster's CA,
and the management API's relay to a vhost's owner is HTTPS (it carries Basic credentials)."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pika
import pytest

from tests.cluster.conftest import Cluster
from tests.nodeproc import free_port
from tests.tlscerts import make_pki


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("tlscluster")
    pki = make_pki(base / "pki")
    c = Cluster(base, size=2)
    for n in c.nodes:
        n.settings.update({"tls_cert": pki["server"], "tls_key": pki["server_key"],
                           "tls_ca": pki["ca"], "amqps_port": str(free_port()),
                           "http_tls": "true", "cluster_tls": "true"})
    for n in c.nodes:
        n.launch()
    for n in c.nodes:
        n.wait(60)
    c.pki = pki  # type: ignore[attr-defined]
    yield c
    c.stop()


def https(c: Cluster, node, method: str, path: str, body: object = None) -> tuple[int, object]:
    ctx = ssl.create_default_context(cafile=c.pki["ca"])  # type: ignore[attr-defined]
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"https://localhost:{node.http_port}{path}", data=data,
                                 method=method)
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=20) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def wait_for(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise TimeoutError("condition not reached")


def test_forwarding_and_relay_run_over_tls(tls_cluster: Cluster):
    c = tls_cluster
    n1, n2 = c.nodes
    wait_for(lambda: len(https(c, n1, "GET", "/api/cluster-status")[1]["nodes"]) == 2)
    code, out = https(c, n1, "PUT", "/api/cluster/vhosts/far", {"owner": n2.name})
    assert code == 201, out
    code, out = https(c, n1, "PUT", "/api/permissions/far/guest",
                      {"configure": ".*", "write": ".*", "read": ".*"})
    assert code in (201, 204), out
    wait_for(lambda: https(c, n2, "GET", "/api/permissions/far/guest")[0] == 200)
    # a client of n1 is forwarded to n2 over the TLS cluster port
    conn = pika.BlockingConnection(pika.URLParameters(
        f"amqp://guest:guest@127.0.0.1:{n1.amqp_port}/far"))
    ch = conn.channel()
    ch.queue_declare("far-q")
    ch.basic_publish("", "far-q", b"through tls")
    # the management API on n1 relays to n2 over HTTPS
    code, out = https(c, n1, "POST", "/api/queues/far/far-q/get",
                      {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"})
    assert code == 200 and out[0]["payload"] == "through tls", out  # type: ignore[index]
    conn.close()
    assert "forwarding" in n1.log_text()


def test_the_cluster_port_speaks_only_tls(tls_cluster: Cluster):
    c = tls_cluster
    n2 = c.nodes[1]
    with socket.create_connection(("127.0.0.1", n2.forward_port), timeout=3) as s:
        s.sendall(b"hello")
        try:
            data = s.recv(64)
        except (TimeoutError, OSError):
            data = b""
    assert b"WFWD2" not in data  # no cleartext handshake offered
    pki = c.pki  # type: ignore[attr-defined]
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{n2.forward_port}", "-CAfile",
         pki["ca"], "-cert", pki["server"], "-key", pki["server_key"]],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(2.0)
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    assert b"Verify return code: 0 (ok)" in out and b"WFWD2" in out, out[-1500:]
