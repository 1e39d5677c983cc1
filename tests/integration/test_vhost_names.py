"""Against a real node: vhost names that used to be taken for tombstones,
escape the store namespace or overflow the file-name limit keep their messages across a
restart and can be deleted; invalid names are refused at creation."""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from urllib.parse import quote

import pika
import pytest

from tests.nodeproc import NodeProcess

NAMES = ["orders.deleted-1", "..", "注文" * 40]


def api(node: NodeProcess, method: str, path: str, body: object = None) -> int:
    req = urllib.request.Request(node.http_url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def q(vhost: str) -> str:
    # dots quoted too: an HTTP path segment ".." would otherwise be resolved away
    return quote(vhost, safe="").replace(".", "%2E")


def url(node: NodeProcess, vhost: str) -> str:
    return f"amqp://guest:guest@127.0.0.1:{node.amqp_port}/{q(vhost)}"


@pytest.fixture
def fresh_node(tmp_path):
    n = NodeProcess(tmp_path / "data").start()
    yield n
    n.stop()


def test_awkward_vhost_names_keep_their_messages(fresh_node):
    n = fresh_node
    for name in NAMES:
        assert api(n, "PUT", f"/api/vhosts/{q(name)}") == 201, name
        assert api(n, "PUT", f"/api/permissions/{q(name)}/guest",
                   {"configure": ".*", "write": ".*", "read": ".*"}) in (201, 204)
        c = pika.BlockingConnection(pika.URLParameters(url(n, name)))
        ch = c.channel()
        ch.queue_declare("kept", durable=True)
        ch.confirm_delivery()
        ch.basic_publish("", "kept", b"survives", pika.BasicProperties(delivery_mode=2))
        c.close()
    n.stop()
    n.start()
    for name in NAMES:
        c = pika.BlockingConnection(pika.URLParameters(url(n, name)))
        got = c.channel().basic_get("kept", auto_ack=True)[2]
        c.close()
        assert got == b"survives", name
    for name in NAMES:
        assert api(n, "DELETE", f"/api/vhosts/{q(name)}") == 204, name
    assert n.running and os.path.isdir(n.data_dir / "raft")


def test_invalid_vhost_names_are_refused(fresh_node):
    n = fresh_node
    assert api(n, "PUT", "/api/vhosts/" + quote("x" * 256, safe="")) == 400
    assert api(n, "PUT", "/api/vhosts/" + quote("bad\nname", safe="")) == 400
    assert api(n, "PUT", "/api/vhosts/" + quote("é" * 127, safe="")) == 201  # 254 bytes
