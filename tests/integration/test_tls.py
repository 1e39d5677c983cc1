"""AMQPS and HTTPS with RabbitMQ's ssl_options as flags, tested with pika,
aio-pika and `openssl s_client`; client certificates (verify peer, fail_if_no_peer_cert,
EXTERNAL)."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import shutil
import ssl
import subprocess
import time
import urllib.request

import aio_pika
import pika
import pytest

from tests.nodeproc import NodeProcess, free_port, wait_port
from tests.tlscerts import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_node(base, pki: dict[str, str], **extra: object) -> NodeProcess:
    settings = {"tls_cert": pki["server"], "tls_key": pki["server_key"], "tls_ca": pki["ca"],
                "amqps_port": free_port(), "http_tls": "true", **extra}
    n = NodeProcess(base, **{k: str(v) for k, v in settings.items()})
    n.start()
    wait_port(int(n.settings["amqps_port"]), 30, n.proc)
    return n


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, pki):
    n = tls_node(tmp_path_factory.mktemp("tlsnode") / "data", pki)
    yield n
    n.stop()


def client_context(pki: dict[str, str], cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki["ca"])
    if cert:
        ctx.load_cert_chain(pki[cert], pki[cert + "_key"])
    return ctx


def amqps_params(node: NodeProcess, ctx: ssl.SSLContext, **kw) -> pika.ConnectionParameters:
    return pika.ConnectionParameters("localhost", int(node.settings["amqps_port"]),
                                     ssl_options=pika.SSLOptions(ctx, "localhost"), **kw)


def https_get(node: NodeProcess, path: str, ctx: ssl.SSLContext) -> object:
    req = urllib.request.Request(f"https://localhost:{node.http_port}{path}")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        return json.loads(r.read())


def test_pika_over_amqps(node, pki):
    c = pika.BlockingConnection(amqps_params(node, client_context(pki)))
    ch = c.channel()
    ch.queue_declare("tls-q")
    ch.basic_publish("", "tls-q", b"over tls")
    assert ch.basic_get("tls-q", auto_ack=True)[2] == b"over tls"
    # the management API (over HTTPS) says which connection is encrypted
    conns = https_get(node, "/api/connections", client_context(pki))
    assert isinstance(conns, list)
    assert [x["ssl"] for x in conns] == [True]
    assert conns[0]["auth_mechanism"] == "PLAIN"
    c.close()


def test_aio_pika_over_amqps(node, pki):
    async def main() -> bytes:
        conn = await aio_pika.connect(
            host="localhost", port=int(node.settings["amqps_port"]), login="guest",
            password="guest", ssl=True, ssl_context=client_context(pki))
        async with conn:
            ch = await conn.channel()
            q = await ch.declare_queue("tls-aio", auto_delete=True)
            await ch.default_exchange.publish(aio_pika.Message(b"aio over tls"), "tls-aio")
            msg = await q.get(timeout=5)
            await msg.ack()
            return msg.body
    assert asyncio.run(main()) == b"aio over tls"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")
def test_openssl_s_client_handshake(node, pki):
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{node.settings['amqps_port']}",
         "-CAfile", pki["ca"], "-servername", "localhost", "-verify_return_error"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(b"AMQP\x00\x00\x09\x01")
    proc.stdin.flush()  # stdin stays open: s_client keeps reading the server's answer
    time.sleep(2.0)
    proc.terminate()
    out, _err = proc.communicate(timeout=10)
    assert b"Verify return code: 0 (ok)" in out, out[-2000:]
    assert b"PLAIN AMQPLAIN" in out  # connection.start came back over TLS


def test_plain_port_and_https_management(node, pki):
    c = pika.BlockingConnection(pika.URLParameters(node.url))  # 5672 stays plain
    c.close()
    overview = https_get(node, "/api/overview", client_context(pki))
    assert isinstance(overview, dict) and overview["node"] == node.name
    with pytest.raises((OSError, http.client.HTTPException)):  # TLS only on that port
        urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/api/overview", timeout=5)


def test_client_certificates_and_external(tmp_path, pki):
    n = tls_node(tmp_path / "data", pki, tls_verify="peer", tls_fail_if_no_peer_cert="true")
    try:
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            pika.BlockingConnection(amqps_params(n, client_context(pki),
                                                 connection_attempts=1))
        ctx = client_context(pki, "client-guest")
        c = pika.BlockingConnection(amqps_params(
            n, ctx, credentials=pika.credentials.ExternalCredentials()))
        c.channel().queue_declare("ext-q", auto_delete=True)
        conns = https_get(n, "/api/connections", ctx)
        assert isinstance(conns, list)
        assert [(x["user"], x["auth_mechanism"], x["ssl"]) for x in conns] == [
            ("guest", "EXTERNAL", True)]
        c.close()
    finally:
        n.stop()
