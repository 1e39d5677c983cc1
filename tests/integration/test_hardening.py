"""Issue 11: holes a user would hit or an attacker would use (permissions, revoked users,
memory a client that never reads can pin, honest management figures)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from tests.nodeproc import REPO


def ctl(node, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.ctl", "--node", node.http_url, *args],
                          capture_output=True, text=True, cwd=REPO, check=check, timeout=30)


def api(node, method: str, path: str, body: dict | None = None, user: str = "guest",
        password: str = "guest") -> tuple[int, object]:
    req = urllib.request.Request(node.http_url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Authorization", "Basic " + base64.b64encode(
        f"{user}:{password}".encode()).decode())
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None


@pytest.fixture
def readonly_user(node):
    """A user who may configure and read everything in "/" but write nowhere (`^$`)."""
    ctl(node, "add_user", "reader", "r34d")
    ctl(node, "set_permissions", "-p", "/", "reader", ".*", "^$", ".*")
    yield "reader", "r34d"
    ctl(node, "delete_user", "reader", check=False)


# --- item 1: the default exchange is checked as amq.default ---------------------------
def test_default_exchange_needs_write_permission_over_amqp(node, ch, readonly_user):
    ch.queue_declare("h11-victim")
    user, password = readonly_user
    c = pika.BlockingConnection(pika.URLParameters(
        f"amqp://{user}:{password}@127.0.0.1:{node.amqp_port}/%2F"))
    try:
        rch = c.channel()
        rch.basic_publish("", "h11-victim", b"forged")
        with pytest.raises(ChannelClosedByBroker) as e:
            rch.queue_declare("h11-victim", passive=True)
        assert e.value.reply_code == 403
        assert e.value.reply_text == ("ACCESS_REFUSED - access to exchange 'amq.default' in "
                                      "vhost '/' refused for user 'reader'")
    finally:
        c.close()
    assert ch.queue_declare("h11-victim", passive=True).method.message_count == 0
    ch.queue_delete("h11-victim")


def test_default_exchange_needs_write_permission_over_http(node, ch, readonly_user):
    ch.queue_declare("h11-victim-http")
    ctl(node, "set_user_tags", "reader", "management")
    user, password = readonly_user
    status, out = api(node, "POST", "/api/exchanges/%2F/amq.default/publish",
                      {"properties": {}, "routing_key": "h11-victim-http", "payload": "forged",
                       "payload_encoding": "string"}, user, password)
    assert status == 401, out
    assert ch.queue_declare("h11-victim-http", passive=True).method.message_count == 0
    ch.queue_delete("h11-victim-http")
