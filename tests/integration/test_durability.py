"""Durability: definitions and persistent messages survive a restart and kill -9; transient
messages and queues do not; a backlog larger than the in-memory limit stays in LMDB."""

from __future__ import annotations

import time

import pika
import pytest

from tests.nodeproc import NodeProcess


@pytest.fixture
def fresh(tmp_path):
    n = NodeProcess(tmp_path / "data", queue_memory_messages="2000").start()
    yield n
    n.stop()


def connect(n: NodeProcess) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(n.url))


def test_definitions_survive_restart(fresh):
    c = connect(fresh)
    ch = c.channel()
    ch.exchange_declare("orders", exchange_type="topic", durable=True)
    ch.queue_declare("orders.eu", durable=True, arguments={"x-max-length": 1000})
    ch.queue_bind("orders.eu", "orders", "eu.#")
    ch.exchange_declare("transient_x", exchange_type="fanout", durable=False)
    ch.queue_declare("transient_q", durable=False)
    c.close()
    fresh.stop()
    fresh.start()
    c = connect(fresh)
    ch = c.channel()
    ch.exchange_declare("orders", exchange_type="topic", durable=True, passive=True)
    ok = ch.queue_declare("orders.eu", durable=True, arguments={"x-max-length": 1000})
    assert ok.method.message_count == 0
    ch.basic_publish("orders", "eu.de", b"routed after restart")
    assert ch.basic_get("orders.eu", auto_ack=True)[2] == b"routed after restart"
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("transient_q", passive=True)
    assert e.value.reply_code == 404
    ch = c.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        ch.exchange_declare("transient_x", passive=True)
    c.close()


def test_kill9_keeps_every_confirmed_persistent_message(fresh):
    c = connect(fresh)
    ch = c.channel()
    ch.queue_declare("crash", durable=True)
    ch.queue_declare("crash_transient", durable=True)
    ch.confirm_delivery()
    n = 3000
    for i in range(n):
        ch.basic_publish("", "crash", str(i).encode(), pika.BasicProperties(delivery_mode=2))
    for _ in range(10):
        ch.basic_publish("", "crash_transient", b"t", pika.BasicProperties(delivery_mode=1))
    # take 5 messages without acking them: they must come back redelivered
    ch2 = c.channel()
    delivered = [ch2.basic_get("crash")[0] for _ in range(5)]
    assert all(m is not None for m in delivered)
    time.sleep(0.2)  # let the delivered marks reach the store's next commit
    fresh.kill()
    fresh.start()
    c = connect(fresh)
    ch = c.channel()
    ok = ch.queue_declare("crash", durable=True, passive=True)
    assert ok.method.message_count == n
    bodies, redelivered = [], []
    for _ in range(n):
        m, _p, body = ch.basic_get("crash", auto_ack=True)
        bodies.append(int(body))
        redelivered.append(m.redelivered)
    assert bodies == list(range(n))
    assert redelivered[:5] == [True] * 5
    assert not any(redelivered[5:])
    # transient messages are gone after a restart, as in RabbitMQ
    assert ch.queue_declare("crash_transient", passive=True).method.message_count == 0
    c.close()


def test_backlog_larger_than_memory_limit_pages_through_lmdb(fresh):
    c = connect(fresh)
    ch = c.channel()
    ch.queue_declare("backlog", durable=True)
    ch.confirm_delivery()
    n = 9000  # the node keeps at most 2000 ready messages of a queue in memory
    for i in range(n):
        ch.basic_publish("", "backlog", i.to_bytes(4, "big") * 64,
                         pika.BasicProperties(delivery_mode=2 if i % 3 else 1))
    assert ch.queue_declare("backlog", passive=True).method.message_count == n
    got = []
    for _ in range(n):
        m, _p, body = ch.basic_get("backlog", auto_ack=True)
        got.append(int.from_bytes(body[:4], "big"))
    assert got == list(range(n))
    assert ch.basic_get("backlog") == (None, None, None)
    c.close()


def test_paged_backlog_survives_restart(fresh):
    c = connect(fresh)
    ch = c.channel()
    ch.queue_declare("paged", durable=True)
    ch.confirm_delivery()
    for i in range(5000):
        ch.basic_publish("", "paged", str(i).encode(), pika.BasicProperties(delivery_mode=2))
    c.close()
    fresh.stop()
    fresh.start()
    c = connect(fresh)
    ch = c.channel()
    assert ch.queue_declare("paged", passive=True).method.message_count == 5000
    got = [int(ch.basic_get("paged", auto_ack=True)[2]) for _ in range(5000)]
    assert got == list(range(5000))
    c.close()


def test_transient_queue_backlog_pages_too(fresh):
    c = connect(fresh)
    ch = c.channel()
    ch.queue_declare("transient_backlog", durable=False)
    n = 7000
    for i in range(n):
        ch.basic_publish("", "transient_backlog", str(i).encode())
    assert ch.queue_declare("transient_backlog", passive=True).method.message_count == n
    got = [int(ch.basic_get("transient_backlog", auto_ack=True)[2]) for _ in range(n)]
    assert got == list(range(n))
    c.close()
    fresh.kill()
    fresh.start()  # the paged records of the transient queue are dropped at start
    c = connect(fresh)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        c.channel().queue_declare("transient_backlog", passive=True)
