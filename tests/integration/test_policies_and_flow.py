"""Policies (set_policy/clear_policy/list_policies and their effect merged with queue
arguments), resource alarms blocking publishers, and per-vhost limits."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from tests.integration.test_basic_pika import pump
from tests.integration.test_extensions import get_all
from tests.nodeproc import REPO


def ctl(node, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "node.ctl", "--node", node.http_url, *args],
                       capture_output=True, text=True, cwd=REPO, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_policy_sets_dlx_ttl_and_max_length(node, ch):
    ch.exchange_declare("pol.dlx", exchange_type="fanout")
    dead = ch.queue_declare("pol.dead").method.queue
    ch.queue_bind(dead, "pol.dlx")
    ctl(node, "set_policy", "pol-limits", "^pol\\.work",
        '{"dead-letter-exchange": "pol.dlx", "max-length": 2, "message-ttl": 60000}',
        "--apply-to", "queues", "--priority", "1")
    rows = json.loads(ctl(node, "list_policies", "-f", "json"))
    assert any(r["name"] == "pol-limits" and r["pattern"] == "^pol\\.work" for r in rows)
    q = ch.queue_declare("pol.work").method.queue
    for i in range(4):
        ch.basic_publish("", q, str(i).encode())
    assert [b for _, _, b in get_all(ch, q)] == [b"2", b"3"]
    dead_msgs = get_all(ch, dead, n=2)
    assert [b for _, _, b in dead_msgs] == [b"0", b"1"]
    assert dead_msgs[0][1].headers["x-death"][0]["reason"] == "maxlen"
    # a queue argument wins over the policy for non-numeric keys; numbers: the smaller
    q2 = ch.queue_declare("pol.work2", arguments={"x-max-length": 1}).method.queue
    for i in range(3):
        ch.basic_publish("", q2, str(i).encode())
    assert [b for _, _, b in get_all(ch, q2)] == [b"2"]
    # clearing the policy lifts its limits from existing queues
    ctl(node, "clear_policy", "pol-limits")
    time.sleep(0.1)
    for i in range(4):
        ch.basic_publish("", q, str(i).encode())
    assert len(get_all(ch, q)) == 4
    for name in ("pol.work", "pol.work2", "pol.dead"):
        ch.queue_delete(name)
    ch.exchange_delete("pol.dlx")


def test_policy_applies_to_existing_queue_and_alternate_exchange(node, ch):
    q = ch.queue_declare("polx.existing").method.queue
    ctl(node, "set_policy", "polx-ttl", "^polx\\.", '{"message-ttl": 100}')
    time.sleep(0.1)
    ch.basic_publish("", q, b"expires")
    time.sleep(0.4)
    assert get_all(ch, q) == []
    ctl(node, "clear_policy", "polx-ttl")
    ch.exchange_declare("polx.ae", exchange_type="fanout")
    caught = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(caught, "polx.ae")
    ch.exchange_declare("polx.main", exchange_type="direct")
    ctl(node, "set_policy", "polx-ae", "^polx\\.main$", '{"alternate-exchange": "polx.ae"}',
        "--apply-to", "exchanges")
    time.sleep(0.1)
    ch.basic_publish("polx.main", "nowhere", b"to the AE")
    assert [b for _, _, b in get_all(ch, caught, n=1)] == [b"to the AE"]
    ctl(node, "clear_policy", "polx-ae")
    ch.queue_delete(q)
    ch.exchange_delete("polx.main")
    ch.exchange_delete("polx.ae")


def test_memory_alarm_blocks_publishers_until_it_clears(node):
    publisher = pika.BlockingConnection(pika.URLParameters(node.url))
    consumer = pika.BlockingConnection(pika.URLParameters(node.url))
    events = []
    publisher.add_on_connection_blocked_callback(lambda c, f: events.append("blocked"))
    publisher.add_on_connection_unblocked_callback(lambda c, f: events.append("unblocked"))
    try:
        pch = publisher.channel()
        q = pch.queue_declare("alarm_q").method.queue
        pch.basic_publish("", q, b"before")
        cch = consumer.channel()
        ctl(node, "set_vm_memory_high_watermark", "absolute", "1")  # any use is too much
        pump(publisher, 3, until=lambda: "blocked" in events)
        assert events == ["blocked"]
        status = json.loads(urllib_get(node, "/api/health/checks/alarms"))
        assert status["status"] == "failed"
        # the broker no longer reads the publisher: this message waits in its socket
        pch.basic_publish("", q, b"during alarm")
        time.sleep(0.5)
        # consumers keep draining meanwhile
        assert cch.basic_get(q, auto_ack=True)[2] == b"before"
        assert cch.basic_get(q, auto_ack=True) == (None, None, None)
        ctl(node, "set_vm_memory_high_watermark", "0.9")
        pump(publisher, 3, until=lambda: "unblocked" in events)
        assert events == ["blocked", "unblocked"]
        deadline = time.monotonic() + 3
        got = None
        while got is None and time.monotonic() < deadline:
            got = cch.basic_get(q, auto_ack=True)[2]
        assert got == b"during alarm"
        cch.queue_delete(q)
    finally:
        ctl(node, "set_vm_memory_high_watermark", "0.9")
        publisher.close()
        consumer.close()


def urllib_get(node, path: str) -> str:
    import base64
    import urllib.error
    import urllib.request
    req = urllib.request.Request(node.http_url + path)
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()


def test_disk_alarm_blocks_publishers(node):
    c = pika.BlockingConnection(pika.URLParameters(node.url))
    events = []
    c.add_on_connection_blocked_callback(lambda conn, f: events.append(f.method.reason))
    try:
        ch = c.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"x")
        ctl(node, "set_disk_free_limit", str(1 << 60))
        pump(c, 3, until=lambda: events)
        assert events == ["low on disk"]
    finally:
        ctl(node, "set_disk_free_limit", "50000000")
        c.close()


def test_vhost_limits(node):
    ctl(node, "add_vhost", "limited")
    ctl(node, "set_permissions", "-p", "limited", "guest", ".*", ".*", ".*")
    ctl(node, "set_vhost_limits", "-p", "limited", '{"max-connections": 1, "max-queues": 2}')
    url = f"amqp://guest:guest@127.0.0.1:{node.amqp_port}/limited"
    first = pika.BlockingConnection(pika.URLParameters(url))
    try:
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
            pika.BlockingConnection(pika.URLParameters(url))
        assert "connection limit (1) is reached" in str(e.value)
        ch = first.channel()
        ch.queue_declare("a")
        ch.queue_declare("b")
        with pytest.raises(ChannelClosedByBroker) as e:
            ch.queue_declare("c")
        assert e.value.reply_code == 406 and "queue limit in vhost 'limited' (2)" in \
            e.value.reply_text
    finally:
        first.close()
    ctl(node, "delete_vhost", "limited")


def test_blocked_publisher_thread_resumes(node):
    """A pika publisher stuck in basic_publish during an alarm finishes once it clears."""
    # pika gives up (instead of waiting forever) if the connection stays blocked 20 s
    c = pika.BlockingConnection(pika.URLParameters(node.url + "?blocked_connection_timeout=20"))
    ch = c.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("", exclusive=True).method.queue
    ctl(node, "set_vm_memory_high_watermark", "absolute", "1")
    cleared = threading.Event()
    errors: list[BaseException] = []
    ch.basic_publish("", q, b"first")  # passes, and makes the connection a publisher
    time.sleep(0.3)

    def clear_later():
        try:
            time.sleep(1.0)
            ctl(node, "set_vm_memory_high_watermark", "0.9")
            cleared.set()
        except BaseException as e:  # noqa: B036 - reported by the main thread
            errors.append(e)
            urllib_put_watermark(node)

    t = threading.Thread(target=clear_later)
    t.start()
    try:
        start = time.monotonic()
        ch.basic_publish("", q, b"second")  # confirmed only after the alarm clears
        waited = time.monotonic() - start
    finally:
        t.join()
    assert not errors, errors
    assert cleared.is_set() and waited >= 0.5
    assert ch.queue_declare(q, passive=True).method.message_count == 2
    c.close()


def urllib_put_watermark(node) -> None:
    """Last resort for the test above: clear the alarm without the CLI."""
    import base64
    import urllib.request
    req = urllib.request.Request(node.http_url + "/api/resources/vm-memory-high-watermark",
                                 data=json.dumps({"fraction": 0.9}).encode(), method="PUT")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    req.add_header("Content-Type", "application/json")
    urllib.request.urlopen(req, timeout=10).read()
