"""exchange.* and queue.* declare/delete flags and their errors."""

from __future__ import annotations

import time

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker


def test_exchange_internal_refuses_publish(conn):
    ch = conn.channel()
    ch.exchange_declare("internal_x", exchange_type="fanout", internal=True)
    ch.basic_publish("internal_x", "", b"x")
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare("", exclusive=True)
    assert e.value.reply_code == 403 and "internal exchange 'internal_x'" in e.value.reply_text
    conn.channel().exchange_delete("internal_x")


def test_exchange_delete_if_unused(conn):
    ch = conn.channel()
    ch.exchange_declare("used_x", exchange_type="direct")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "used_x", "k")
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_delete("used_x", if_unused=True)
    assert e.value.reply_code == 406 and "in use" in e.value.reply_text
    ch = conn.channel()
    ch.exchange_delete("used_x")
    ch.exchange_delete("used_x")  # idempotent, as in RabbitMQ
    with pytest.raises(ChannelClosedByBroker):
        ch.exchange_declare("used_x", passive=True)


def test_auto_delete_exchange_goes_with_last_binding(conn):
    for durable in (False, True):
        ch = conn.channel()
        name = f"autodel_x_{durable}"
        ch.exchange_declare(name, exchange_type="direct", auto_delete=True, durable=durable)
        q = ch.queue_declare(f"autodel_q_{durable}", durable=durable).method.queue
        ch.queue_bind(q, name, "k")
        ch.queue_unbind(q, name, "k")
        time.sleep(0.05)
        with pytest.raises(ChannelClosedByBroker) as e:
            ch.exchange_declare(name, passive=True)
        assert e.value.reply_code == 404
        conn.channel().queue_delete(q)


def test_queue_delete_if_unused_if_empty_and_purge(conn):
    ch = conn.channel()
    q = ch.queue_declare("flags_q").method.queue
    ch.basic_publish("", q, b"1")
    ch.basic_publish("", q, b"2")
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_delete(q, if_empty=True)
    assert e.value.reply_code == 406 and "is not empty" in e.value.reply_text
    ch = conn.channel()
    tag = ch.basic_consume(q, lambda *a: None)
    conn.process_data_events(time_limit=0.1)
    ch2 = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch2.queue_delete(q, if_unused=True)
    assert e.value.reply_code == 406 and "in use" in e.value.reply_text
    ch.basic_cancel(tag)
    ch.basic_recover(requeue=True)
    assert ch.queue_purge(q).method.message_count == 2
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    assert ch.queue_delete(q).method.message_count == 0
    assert ch.queue_delete(q).method.message_count == 0  # idempotent


def test_declare_ok_counts(conn):
    ch = conn.channel()
    q = ch.queue_declare("counts_q").method.queue
    for _ in range(3):
        ch.basic_publish("", q, b"x")
    ch.basic_consume(q, lambda *a: None)
    ok = conn.channel().queue_declare(q, passive=True).method
    assert ok.consumer_count == 1
    conn.channel().queue_delete(q)


def test_server_named_queue_is_remembered_for_empty_name(node):
    from node.amqp import spec
    from node.amqp.frames import method_frame
    from tests.integration.test_errors import raw_open
    s = raw_open(node)
    s.sendall(method_frame(1, spec.QueueDeclare(queue="", exclusive=True)))
    name = s.read_method().queue
    # queue.bind with queue="" and routing key "" uses the last declared queue's name
    s.sendall(method_frame(1, spec.QueueBind(queue="", exchange="amq.direct", routing_key="")))
    assert isinstance(s.read_method(), spec.QueueBindOk)
    s.sendall(method_frame(1, spec.QueuePurge(queue="")))
    ok = s.read_method()
    assert isinstance(ok, spec.QueuePurgeOk)
    s.sendall(method_frame(1, spec.QueueDeclare(queue="", passive=True)))
    assert s.read_method().queue == name
    s.close()


def test_amqplain_login(node):
    import struct

    from node.amqp import spec
    from node.amqp.fields import encode_table
    from node.amqp.frames import method_frame
    from tests.integration.test_errors import RawClient
    s = RawClient(node)
    s.sendall(b"AMQP\x00\x00\x09\x01")
    start = s.read_method()
    assert b"AMQPLAIN" in start.mechanisms.split()
    caps = start.server_properties["capabilities"]
    for cap in ("publisher_confirms", "exchange_exchange_bindings", "basic.nack",
                "consumer_cancel_notify", "connection.blocked", "authentication_failure_close",
                "per_consumer_qos"):
        assert caps[cap] is True
    table = encode_table({"LOGIN": "guest", "PASSWORD": "guest"})[4:]  # without its length
    s.sendall(method_frame(0, spec.ConnectionStartOk(mechanism="AMQPLAIN", response=table,
                                                     locale="en_US")))
    tune = s.read_method()
    assert isinstance(tune, spec.ConnectionTune)
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131072, 60)
    assert struct.calcsize(">I") == 4
    s.close()


def test_kombu_uses_amqplain_or_plain(node):
    import kombu
    with kombu.Connection(f"amqp://guest:guest@127.0.0.1:{node.amqp_port}//",
                          login_method="AMQPLAIN") as c:
        c.connect()
        assert c.connected


def test_channel_close_and_reopen(conn):
    ch = conn.channel()
    ch.close()
    ch = conn.channel()
    ch.queue_declare("", exclusive=True)
    assert conn.is_open


def test_durable_declare_latency_is_milliseconds(conn):
    """Not a timing assertion: just that a declare through Raft does not take pysyncobj's
    default ~100 ms batching delay (regression guard with a generous bound)."""
    ch = conn.channel()
    t = time.perf_counter()
    for i in range(20):
        ch.queue_declare(f"lat_q{i}", durable=True)
    per = (time.perf_counter() - t) / 20
    for i in range(20):
        ch.queue_delete(f"lat_q{i}")
    assert per < 0.08, f"{per * 1000:.1f} ms per durable queue.declare"
    _ = pika
