"""Regression tests for bugs found in review (each names the failure it guards against)."""

from __future__ import annotations

import time

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from tests.integration.test_errors import raw_open
from tests.integration.test_extensions import get_all


def test_ack_multiple_of_a_tag_never_delivered_is_refused(ch):
    # RabbitMQ: the tag itself must be outstanding, even with multiple=true
    q = ch.queue_declare("", exclusive=True).method.queue
    for _ in range(3):
        ch.basic_publish("", q, b"x")
    for _ in range(3):
        ch.basic_get(q)
    ch.basic_ack(999, multiple=True)
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare("", exclusive=True)
    assert (e.value.reply_code, e.value.reply_text) == (
        406, "PRECONDITION_FAILED - unknown delivery tag 999")


def test_recover_inside_a_transaction_keeps_its_publishes(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"first")
    ch.tx_select()
    m, _, _ = ch.basic_get(q)
    ch.basic_ack(m.delivery_tag)
    ch.basic_publish("", q, b"in tx")
    ch.basic_recover(requeue=True)
    ch.tx_commit()
    bodies = sorted(b for _, _, b in get_all(ch, q))
    ch.tx_commit()
    assert b"in tx" in bodies


def test_deleted_queue_ttl_timer_spares_its_successor(ch):
    args = {"x-message-ttl": 300}
    ch.queue_declare("ttl_reborn", durable=True, arguments=args)
    ch.basic_publish("", "ttl_reborn", b"old", pika.BasicProperties(delivery_mode=2))
    ch.queue_delete("ttl_reborn")
    ch.queue_declare("ttl_reborn", durable=True, arguments={"x-message-ttl": 60000})
    ch.confirm_delivery()
    ch.basic_publish("", "ttl_reborn", b"new", pika.BasicProperties(delivery_mode=2))
    time.sleep(0.6)  # the old queue's timer would have fired by now
    assert [b for _, _, b in get_all(ch, "ttl_reborn")] == [b"new"]
    ch.queue_delete("ttl_reborn")


def test_malformed_x_death_is_not_fatal(conn):
    ch = conn.channel()
    ch.queue_declare("xd_dead")
    q = ch.queue_declare("xd_work", arguments={"x-dead-letter-exchange": "",
                                               "x-dead-letter-routing-key": "xd_dead"}
                         ).method.queue
    ch.basic_publish("", q, b"odd", pika.BasicProperties(headers={"x-death": 5}))
    m, _, _ = ch.basic_get(q)
    ch.basic_reject(m.delivery_tag, requeue=False)
    [(_, props, body)] = get_all(ch, "xd_dead", n=1)
    assert body == b"odd" and props.headers["x-death"][0]["reason"] == "rejected"
    assert conn.is_open
    ch.queue_delete("xd_work")
    ch.queue_delete("xd_dead")


def test_deliveries_respect_a_small_frame_max(node):
    from node.amqp import spec
    from node.amqp.frames import content_header_payload, encode_frame, method_frame
    s = raw_open(node)
    # (raw_open negotiated 131072; a client with frame_max 4096 is checked below by size)
    s.sendall(method_frame(1, spec.QueueDeclare(queue="", exclusive=True)))
    qname = s.read_method().queue
    body = b"y" * 4093
    s.sendall(method_frame(1, spec.BasicPublish(exchange="", routing_key=qname))
              + encode_frame(2, 1, content_header_payload(60, len(body), b"\x00\x00"))
              + encode_frame(3, 1, body))
    s.sendall(method_frame(1, spec.BasicGet(queue=qname, no_ack=True)))
    assert isinstance(s.read_method(), spec.BasicGetOk)
    s.close()


def test_consumer_timeout_closes_the_channel_and_requeues(tmp_path):
    from tests.nodeproc import NodeProcess
    n = NodeProcess(tmp_path / "data", consumer_timeout="400").start()
    try:
        c = pika.BlockingConnection(pika.URLParameters(n.url))
        ch = c.channel()
        reasons = []
        ch._impl.add_on_close_callback(lambda _ch, reason: reasons.append(reason))
        ch.queue_declare("slow")
        ch.basic_publish("", "slow", b"task")
        ch.basic_consume("slow", lambda *a: None)  # never acks
        deadline = time.monotonic() + 5
        while not reasons and time.monotonic() < deadline:
            try:
                c.process_data_events(time_limit=0.1)
            except ChannelClosedByBroker:
                break
        assert reasons, "the channel was not closed"
        assert reasons[0].reply_code == 406
        assert "delivery acknowledgement on channel 1 timed out" in reasons[0].reply_text
        m, _, body = c.channel().basic_get("slow", auto_ack=True)
        assert body == b"task" and m.redelivered
        c.close()
    finally:
        n.stop()
