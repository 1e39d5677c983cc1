"""Holes a user would hit or an attacker would use (permissions, revoked users,
memory a client that never reads can pin, honest management figures)."""

from __future__ import annotations

import select
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from tests.nodeproc import REPO, http_json


def ctl(node, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.ctl", "--node", node.http_url, *args],
                          capture_output=True, text=True, cwd=REPO, check=check, timeout=30)


def api(node, method: str, path: str, body: dict | None = None, user: str = "guest",
        password: str = "guest") -> tuple[int, object]:
    return http_json(node.http_url, method, path, body, user, password, timeout=10)


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


# --- item 2: deleting a user, or changing their password or permissions, takes effect --
def _user_connection(node, user: str, password: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(
        f"amqp://{user}:{password}@127.0.0.1:{node.amqp_port}/%2F"))


def _closed_with(c: pika.BlockingConnection) -> tuple[int, str]:
    """Wait for the broker to close `c`; its (code, text)."""
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        for _ in range(50):
            c.process_data_events(time_limit=0.1)
    return e.value.reply_code, e.value.reply_text


@pytest.mark.parametrize("change", ["delete_user", "change_password", "clear_permissions"])
def test_revoking_a_user_closes_their_connections(node, change):
    ctl(node, "add_user", "revoked", "pw")
    ctl(node, "set_permissions", "-p", "/", "revoked", ".*", ".*", ".*")
    c = _user_connection(node, "revoked", "pw")
    c.channel().queue_declare("h11-revoked", auto_delete=True)
    if change == "delete_user":
        ctl(node, "delete_user", "revoked")
        expected = "CONNECTION_FORCED - user 'revoked' is deleted"
    elif change == "change_password":
        ctl(node, "change_password", "revoked", "other")
        expected = "CONNECTION_FORCED - credentials of user 'revoked' changed"
    else:
        ctl(node, "clear_permissions", "-p", "/", "revoked")
        expected = "CONNECTION_FORCED - access to vhost '/' revoked for user 'revoked'"
    try:
        assert _closed_with(c) == (320, expected)
    finally:
        ctl(node, "delete_user", "revoked", check=False)


def test_changed_permissions_apply_to_open_channels(node):
    """Cached permission checks are forgotten when permissions change (also the ones a
    deleted-then-recreated user's old channels had)."""
    ctl(node, "add_user", "narrowed", "pw")
    ctl(node, "set_permissions", "-p", "/", "narrowed", ".*", ".*", ".*")
    c = _user_connection(node, "narrowed", "pw")
    try:
        uch = c.channel()
        uch.queue_declare("h11-narrowed", auto_delete=True)
        uch.basic_publish("", "h11-narrowed", b"allowed")
        ctl(node, "set_permissions", "-p", "/", "narrowed", ".*", "^$", ".*")
        uch.basic_publish("", "h11-narrowed", b"refused now")
        with pytest.raises(ChannelClosedByBroker) as e:
            uch.queue_declare("h11-narrowed", passive=True)
        assert e.value.reply_code == 403
    finally:
        if c.is_open:
            c.close()
        ctl(node, "delete_user", "narrowed", check=False)


# --- item 8: a client that never reads cannot make the node hold its traffic --------------
def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _never_reading_client(port: int):  # type: ignore[no-untyped-def]
    """A raw AMQP client, opened on channel 1, whose socket buffers are small and which
    will never read again after the handshake."""
    import socket as socketlib

    from node.amqp import spec
    from node.amqp.frames import FrameReader, method_frame

    s = socketlib.socket()
    s.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_RCVBUF, 16384)
    s.connect(("127.0.0.1", port))
    reader = FrameReader(0)

    def expect(n: int) -> None:
        got = 0
        while got < n:
            got += len(reader.feed(s.recv(65536)))

    s.sendall(b"AMQP\x00\x00\x09\x01")
    expect(1)  # start
    s.sendall(method_frame(0, spec.ConnectionStartOk(
        client_properties={}, mechanism="PLAIN", response=b"\x00guest\x00guest",
        locale="en_US")))
    expect(1)  # tune
    s.sendall(method_frame(0, spec.ConnectionTuneOk(channel_max=16, frame_max=131072,
                                                    heartbeat=0)))
    s.sendall(method_frame(0, spec.ConnectionOpen(virtual_host="/")))
    expect(1)  # open-ok
    s.sendall(method_frame(1, spec.ChannelOpen()))
    expect(1)
    return s


def test_a_client_that_never_reads_its_returns_is_no_longer_read(node):
    """Mandatory publishes that route nowhere come back whole as basic.return; a client
    that never reads them could make the node hold every byte it sends.  The node stops
    reading it instead, so the client soon cannot send more."""
    from node.amqp import spec
    from node.amqp.frames import content_header_payload, encode_frame, method_frame

    body = b"m" * 65536
    one = (method_frame(1, spec.BasicPublish(exchange="", routing_key="h11-nowhere",
                                             mandatory=True))
           + encode_frame(2, 1, content_header_payload(60, len(body),
                                                       spec.BasicProperties().encode()))
           + encode_frame(3, 1, body))
    assert node.proc is not None
    rss_before = _rss_kb(node.proc.pid)
    s = _never_reading_client(node.amqp_port)
    sent = 0
    try:
        s.setblocking(False)
        deadline = time.monotonic() + 4.0
        view = memoryview(one * 16)
        while time.monotonic() < deadline and sent < 512 << 20:
            try:
                sent += s.send(view[sent % len(view):])
            except BlockingIOError:
                select.select([], [s], [], 0.05)
        time.sleep(0.5)
        held_kb = _rss_kb(node.proc.pid) - rss_before
        print(f"\nnever-reading client: sent {sent / 1e6:.1f} MB in 4 s; node RSS "
              f"+{held_kb / 1024:.1f} MiB")
        assert sent < 32 << 20, f"the node kept reading: {sent / 1e6:.0f} MB accepted"
    finally:
        s.close()


# --- item 10: figures the management API shows are measured (values, not only keys) -------
def _metric(node, name: str, path: str = "/metrics/per-object") -> dict[str, float]:
    with urllib.request.urlopen(node.http_url + path, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            out[labels] = float(value)
    return out


def _named(node, name: str) -> pika.BlockingConnection:
    params = pika.URLParameters(node.url)
    params.client_properties = {"connection_name": name}
    return pika.BlockingConnection(params)


def _api_connection(node, name: str) -> dict:
    _, conns = api(node, "GET", "/api/connections")
    assert isinstance(conns, list)
    found = [c for c in conns if c.get("user_provided_name") == name]
    assert len(found) == 1, conns
    return found[0]


@pytest.fixture
def named_conn(node):
    c = _named(node, "h11-figures")
    yield c
    if c.is_open:
        c.close()


def test_management_figures_are_measured(node, named_conn):
    conn = named_conn
    ch1 = conn.channel()
    ch1.queue_declare("h11-figs", arguments={"x-single-active-consumer": True})
    ch1.basic_qos(prefetch_count=1)
    bodies = [b"a" * 100, b"b" * 200, b"c" * 300]
    for i, b in enumerate(bodies):
        ch1.basic_publish("", "h11-figs", b, pika.BasicProperties(
            timestamp=1_700_000_000 + i, delivery_mode=2 if i < 2 else 1))
    first = ch1.basic_consume("h11-figs", lambda *a: None)  # gets "a", keeps it unacked
    ch2 = conn.channel()
    second = ch2.basic_consume("h11-figs", lambda *a: None)
    conn.process_data_events(time_limit=0.3)
    status, q = api(node, "GET", "/api/queues/%2F/h11-figs")
    assert status == 200 and isinstance(q, dict)
    assert q["single_active_consumer_tag"] == first
    assert (q["message_bytes_ready"], q["message_bytes_unacknowledged"],
            q["message_bytes"]) == (500, 100, 600)
    assert q["head_message_timestamp"] == 1_700_000_001  # "b" is now at the head
    for made_up in ("consumer_capacity", "consumer_utilisation", "memory",
                    "messages_persistent", "garbage_collection", "reductions"):
        assert made_up not in q, made_up  # not measured: left out, not a constant
    _, consumers = api(node, "GET", "/api/consumers/%2F")
    assert isinstance(consumers, list)
    active = {c["consumer_tag"]: c["active"] for c in consumers
              if c["queue"]["name"] == "h11-figs"}
    assert active == {first: True, second: False}
    # the queue's own consumer list says the same
    assert {c["consumer_tag"]: (c["active"], c["activity_status"])
            for c in q["consumer_details"]} == {first: (True, "single_active"),
                                                second: (False, "waiting")}
    mine = _api_connection(node, "h11-figures")
    assert mine["auth_mechanism"] == "PLAIN" and mine["ssl"] is False
    assert mine["recv_cnt"] > 0 and mine["send_cnt"] > 0
    ch1.close()
    ch2.close()
    ch = conn.channel()
    ch.queue_delete("h11-figs")

    # a transaction's uncommitted publishes and acks
    ch.queue_declare("h11-tx")
    ch.basic_publish("", "h11-tx", b"to ack")
    method, _, _ = ch.basic_get("h11-tx")
    ch.tx_select()
    ch.basic_publish("", "h11-tx", b"t1")
    ch.basic_publish("", "h11-tx", b"t2")
    ch.basic_ack(method.delivery_tag)
    conn.process_data_events(time_limit=0.2)
    _, chans = api(node, "GET", "/api/channels")
    assert isinstance(chans, list)
    txc = [c for c in chans if c["transactional"]]
    assert [(c["messages_uncommitted"], c["acks_uncommitted"]) for c in txc] == [(2, 1)]
    ch.tx_rollback()
    ch.queue_delete("h11-tx")

    _, nodes = api(node, "GET", "/api/nodes")
    assert isinstance(nodes, list)
    assert not {"proc_used", "proc_total", "run_queue"} & set(nodes[0])


def test_delivered_ack_metric_counts_manual_acks_only(node, named_conn):
    conn = named_conn
    ch = conn.channel()
    ch.queue_declare("h11-metric", auto_delete=False)
    for _ in range(6):
        ch.basic_publish("", "h11-metric", b"x")
    ch.basic_get("h11-metric", auto_ack=False)  # manual ack: counts
    ch.basic_get("h11-metric", auto_ack=False)  # manual ack: counts
    ch.basic_get("h11-metric", auto_ack=True)  # no ack: does not
    ch.basic_consume("h11-metric", lambda *a: None, auto_ack=True)  # 3 without ack: do not
    conn.process_data_events(time_limit=0.3)
    values = _metric(node, "rabbitmq_channel_messages_delivered_ack_total")
    label = f'{_api_connection(node, "h11-figures")["name"]} ({ch.channel_number})'
    mine = [v for k, v in values.items() if label in k]
    assert mine == [2.0], values
    ch.queue_delete("h11-metric")
