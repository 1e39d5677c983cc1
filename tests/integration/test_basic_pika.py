"""basic.* semantics with pika: confirms, get, ack/nack/reject, requeue order, qos,
mandatory returns, server-sent cancel, transactions."""

from __future__ import annotations

import time

import pika
import pytest
from pika.exceptions import UnroutableError


def pump(conn, seconds: float = 0.5, until=None) -> None:
    """Let pika process events for `seconds` (process_data_events returns early)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
        if until is not None and until():
            return


def test_publisher_confirms(ch):
    ch.confirm_delivery()
    q = ch.queue_declare("confirm_q", durable=True).method.queue
    for i in range(200):
        ch.basic_publish("", q, f"m{i}".encode(), pika.BasicProperties(delivery_mode=2))
    assert ch.queue_declare(q, passive=True).method.message_count == 200
    ch.queue_delete(q)


def test_mandatory_unroutable_is_returned(ch):
    ch.confirm_delivery()
    with pytest.raises(UnroutableError) as exc:
        ch.basic_publish("amq.direct", "nowhere", b"x", mandatory=True)
    assert exc.value.messages[0].method.reply_code == 312
    assert exc.value.messages[0].method.reply_text == "NO_ROUTE"


def test_basic_get_and_message_count(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(3):
        ch.basic_publish("", q, str(i).encode())
    method, _p, body = ch.basic_get(q)
    assert body == b"0" and method.message_count == 2 and not method.redelivered
    ch.basic_ack(method.delivery_tag)
    method, _p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"1"
    method, _p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"2"
    assert ch.basic_get(q) == (None, None, None)


def test_nack_requeue_goes_back_to_its_place(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(5):
        ch.basic_publish("", q, str(i).encode())
    m0, _, _ = ch.basic_get(q)
    m1, _, _ = ch.basic_get(q)
    ch.basic_nack(m1.delivery_tag, requeue=True)
    ch.basic_reject(m0.delivery_tag, requeue=True)
    bodies = []
    for _ in range(5):
        m, _, b = ch.basic_get(q, auto_ack=True)
        bodies.append((b, m.redelivered))
    assert bodies == [(b"0", True), (b"1", True), (b"2", False), (b"3", False), (b"4", False)]


def test_reject_without_requeue_drops(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"x")
    m, _, _ = ch.basic_get(q)
    ch.basic_reject(m.delivery_tag, requeue=False)
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_nack_multiple_and_ack_multiple(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(6):
        ch.basic_publish("", q, str(i).encode())
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(6)]
    ch.basic_ack(tags[2], multiple=True)  # acks 0,1,2
    ch.basic_nack(tags[5], multiple=True, requeue=True)  # requeues 3,4,5
    got = [ch.basic_get(q, auto_ack=True)[2] for _ in range(3)]
    assert got == [b"3", b"4", b"5"]


def test_unacked_requeued_when_channel_closes(conn, node):
    ch1 = conn.channel()
    q = ch1.queue_declare("requeue_on_close").method.queue
    for i in range(3):
        ch1.basic_publish("", q, str(i).encode())
    ch2 = conn.channel()
    for _ in range(3):
        ch2.basic_get(q)
    ch2.close()
    got = [ch1.basic_get(q, auto_ack=True) for _ in range(3)]
    assert [b for _, _, b in got] == [b"0", b"1", b"2"]
    assert all(m.redelivered for m, _, _ in got)
    ch1.queue_delete(q)


def test_consumer_prefetch_limits_unacked(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(10):
        ch.basic_publish("", q, str(i).encode())
    ch.basic_qos(prefetch_count=3)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(m))
    pump(conn, 0.5)
    assert len(got) == 3
    ch.basic_ack(got[-1].delivery_tag, multiple=True)
    pump(conn, 0.5)
    assert len(got) == 6


def test_global_qos_limits_channel(conn):
    ch = conn.channel()
    q1 = ch.queue_declare("", exclusive=True).method.queue
    q2 = ch.queue_declare("", exclusive=True).method.queue
    for q in (q1, q2):
        for i in range(5):
            ch.basic_publish("", q, str(i).encode())
    ch.basic_qos(prefetch_count=4, global_qos=True)
    got = []
    ch.basic_consume(q1, lambda c, m, p, b: got.append(m))
    ch.basic_consume(q2, lambda c, m, p, b: got.append(m))
    pump(conn, 0.5)
    assert len(got) == 4


def test_recover_requeues_unacked(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"r")
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(m))
    pump(conn, 0.3)
    assert len(got) == 1 and not got[0].redelivered
    ch.basic_recover(requeue=True)
    pump(conn, 0.3)
    assert len(got) == 2 and got[1].redelivered


def test_server_cancels_consumer_when_queue_deleted(node):
    c1 = pika.BlockingConnection(pika.URLParameters(node.url))
    c2 = pika.BlockingConnection(pika.URLParameters(node.url))
    try:
        ch1 = c1.channel()
        ch1.queue_declare("doomed")
        cancelled = []
        ch1.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
        tag = ch1.basic_consume("doomed", lambda *a: None)
        c2.channel().queue_delete("doomed")
        deadline = time.monotonic() + 3
        while not cancelled and time.monotonic() < deadline:
            c1.process_data_events(time_limit=0.05)
        assert cancelled == [tag]
    finally:
        c1.close()
        c2.close()


def test_consumer_tags_and_cancel(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    tag = ch.basic_consume(q, lambda *a: None, consumer_tag="my-tag")
    assert tag == "my-tag"
    auto = ch.basic_consume(q, lambda *a: None)  # pika picks "ctag1.…" itself
    assert ch.queue_declare(q, passive=True).method.consumer_count == 2
    ch.basic_cancel(tag)
    ch.basic_cancel(auto)
    assert ch.queue_declare(q, passive=True).method.consumer_count == 0


def test_auto_delete_queue_goes_with_last_consumer(conn):
    ch = conn.channel()
    ch.queue_declare("autodel", auto_delete=True)
    tag = ch.basic_consume("autodel", lambda *a: None)
    ch.basic_cancel(tag)
    time.sleep(0.1)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("autodel", passive=True)
    assert e.value.reply_code == 404


def test_transactions_commit_and_rollback(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.tx_select()
    ch.basic_publish("", q, b"a")
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.tx_commit()
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    ch.basic_publish("", q, b"b")
    ch.tx_rollback()
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    m, _, body = ch.basic_get(q)
    ch.basic_ack(m.delivery_tag)
    ch.tx_rollback()  # the ack is undone: the message stays unacked on this channel
    ch.basic_ack(m.delivery_tag)
    ch.tx_commit()
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_round_robin_between_consumers(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    got = {"a": 0, "b": 0}
    ch.basic_consume(q, lambda c, m, p, b: got.__setitem__("a", got["a"] + 1), auto_ack=True)
    ch.basic_consume(q, lambda c, m, p, b: got.__setitem__("b", got["b"] + 1), auto_ack=True)
    for _i in range(20):
        ch.basic_publish("", q, b"x")
    pump(conn, 3, until=lambda: got["a"] + got["b"] == 20)
    assert got == {"a": 10, "b": 10}
