"""RabbitMQ's extensions with real clients: dead-lettering and x-death, TTLs, length limits,
alternate exchanges, sender-selected distribution, priorities, single active consumer."""

from __future__ import annotations

import datetime
import time

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, NackError

from tests.integration.test_basic_pika import pump


def get_all(ch, q: str, timeout: float = 3.0, n: int | None = None) -> list:
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m, p, b = ch.basic_get(q, auto_ack=True)
        if m is None:
            if n is None or len(out) >= n:
                break
            time.sleep(0.02)
            continue
        out.append((m, p, b))
        if n is not None and len(out) >= n:
            break
    return out


def dlx_pair(ch, name: str, **args) -> tuple[str, str]:
    """A work queue dead-lettering into a fanout exchange bound to a dead-letter queue."""
    ch.exchange_declare(f"{name}.dlx", exchange_type="fanout")
    dlq = ch.queue_declare(f"{name}.dead").method.queue
    ch.queue_bind(dlq, f"{name}.dlx")
    arguments = {"x-dead-letter-exchange": f"{name}.dlx", **args}
    q = ch.queue_declare(name, arguments=arguments).method.queue
    return q, dlq


def cleanup(ch, *names):
    for n in names:
        ch.queue_delete(n)
        ch.queue_delete(f"{n}.dead")
        ch.exchange_delete(f"{n}.dlx")


def test_rejected_message_dead_lettered_with_x_death(ch):
    q, dlq = dlx_pair(ch, "dl_reject")
    ch.basic_publish("", q, b"bad", pika.BasicProperties(
        headers={"CC": ["dl_reject"], "BCC": ["secret"], "app": 1}, expiration="60000"))
    m, _, _ = ch.basic_get(q)
    ch.basic_reject(m.delivery_tag, requeue=False)
    [(m, props, body)] = get_all(ch, dlq, n=1)
    assert body == b"bad"
    h = props.headers
    assert props.expiration is None  # removed: it must not expire again
    assert "BCC" not in h and h["CC"] == ["dl_reject"] and h["app"] == 1
    [death] = h["x-death"]
    assert death["count"] == 1
    assert death["reason"] == "rejected"
    assert death["queue"] == "dl_reject"
    assert death["exchange"] == ""
    assert death["routing-keys"] == ["dl_reject", "dl_reject"]  # routing key + CC, not BCC
    assert death["original-expiration"] == "60000"
    assert isinstance(death["time"], datetime.datetime)
    assert h["x-first-death-reason"] == "rejected"
    assert h["x-first-death-queue"] == "dl_reject"
    assert h["x-first-death-exchange"] == ""
    assert h["x-last-death-reason"] == "rejected"
    assert h["x-last-death-queue"] == "dl_reject"
    assert m.exchange == "dl_reject.dlx" and m.routing_key == "dl_reject"
    cleanup(ch, q)


def test_nack_without_requeue_dead_letters_with_routing_key(ch):
    ch.queue_declare("dl_rk_target")
    q = ch.queue_declare("dl_rk", arguments={"x-dead-letter-exchange": "",
                                             "x-dead-letter-routing-key": "dl_rk_target"}
                         ).method.queue
    ch.basic_publish("", q, b"x", pika.BasicProperties(headers={"CC": ["other"]}))
    m, _, _ = ch.basic_get(q)
    ch.basic_nack(m.delivery_tag, requeue=False)
    [(m, props, _)] = get_all(ch, "dl_rk_target", n=1)
    assert m.routing_key == "dl_rk_target"
    assert "CC" not in props.headers  # replaced routing key: CC dropped
    ch.queue_delete("dl_rk")
    ch.queue_delete("dl_rk_target")


def test_queue_ttl_expires_on_time_without_consumers(ch):
    q, dlq = dlx_pair(ch, "dl_ttl", **{"x-message-ttl": 200})
    ch.basic_publish("", q, b"old")
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    time.sleep(0.6)  # nobody consumes: the broker expires it on its own
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    [(_, props, body)] = get_all(ch, dlq, n=1)
    assert body == b"old" and props.headers["x-death"][0]["reason"] == "expired"
    cleanup(ch, q)


def test_per_message_ttl_and_never_delivered_expired(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"short", pika.BasicProperties(expiration="100"))
    ch.basic_publish("", q, b"long", pika.BasicProperties(expiration="60000"))
    time.sleep(0.3)
    got = get_all(ch, q)
    assert [b for _, _, b in got] == [b"long"]


def test_ttl_zero_expires_unless_deliverable(ch):
    q, dlq = dlx_pair(ch, "dl_ttl0", **{"x-message-ttl": 0})
    ch.basic_publish("", q, b"nobody home")
    time.sleep(0.2)
    assert get_all(ch, q) == []
    assert len(get_all(ch, dlq, n=1)) == 1
    cleanup(ch, q)


def test_queue_expires_when_unused(ch):
    ch.queue_declare("expiring_q", arguments={"x-expires": 300})
    time.sleep(0.8)
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare("expiring_q", passive=True)
    assert e.value.reply_code == 404


def test_max_length_drop_head_dead_letters_oldest(ch):
    q, dlq = dlx_pair(ch, "dl_maxlen", **{"x-max-length": 2})
    for i in range(5):
        ch.basic_publish("", q, str(i).encode())
    assert [b for _, _, b in get_all(ch, q)] == [b"3", b"4"]
    dead = get_all(ch, dlq, n=3)
    assert [b for _, _, b in dead] == [b"0", b"1", b"2"]
    assert dead[0][1].headers["x-death"][0]["reason"] == "maxlen"
    cleanup(ch, q)


def test_max_length_bytes(ch):
    q = ch.queue_declare("", exclusive=True, arguments={"x-max-length-bytes": 10}).method.queue
    for b in (b"aaaa", b"bbbb", b"cccc"):
        ch.basic_publish("", q, b)
    assert [b for _, _, b in get_all(ch, q)] == [b"bbbb", b"cccc"]


def test_reject_publish_nacks_confirming_publisher(ch):
    ch.confirm_delivery()
    q = ch.queue_declare("rp_q", arguments={"x-max-length": 1,
                                            "x-overflow": "reject-publish"}).method.queue
    ch.basic_publish("", q, b"fits")
    with pytest.raises(NackError):
        ch.basic_publish("", q, b"refused")
    assert [b for _, _, b in get_all(ch, q)] == [b"fits"]
    ch.queue_delete(q)


def test_reject_publish_dlx(ch):
    q, dlq = dlx_pair(ch, "dl_rpdlx", **{"x-max-length": 1, "x-overflow": "reject-publish-dlx"})
    ch.basic_publish("", q, b"fits")
    ch.basic_publish("", q, b"over")
    assert [b for _, _, b in get_all(ch, q)] == [b"fits"]
    [(_, props, body)] = get_all(ch, dlq, n=1)
    assert body == b"over" and props.headers["x-death"][0]["reason"] == "maxlen"
    cleanup(ch, q)


def test_dead_letter_cycle_is_dropped(ch):
    # expiring back into itself: no rejection in the cycle, so RabbitMQ drops it
    q = ch.queue_declare("dl_cycle", arguments={"x-message-ttl": 50,
                                                "x-dead-letter-exchange": ""}).method.queue
    ch.basic_publish("", q, b"loop")
    time.sleep(0.4)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.queue_delete(q)


def test_celery_style_retry_through_dlx_with_ttl(ch):
    """work -> reject -> retry queue (TTL) -> back to work, count tracked in x-death."""
    ch.exchange_declare("retry.x", exchange_type="direct")
    ch.queue_declare("retry.work", arguments={"x-dead-letter-exchange": "retry.x",
                                              "x-dead-letter-routing-key": "wait"})
    ch.queue_declare("retry.wait", arguments={"x-message-ttl": 100,
                                              "x-dead-letter-exchange": "retry.x",
                                              "x-dead-letter-routing-key": "work"})
    ch.queue_bind("retry.work", "retry.x", "work")
    ch.queue_bind("retry.wait", "retry.x", "wait")
    ch.basic_publish("", "retry.work", b"task")
    attempts = []
    deadline = time.monotonic() + 5
    while len(attempts) < 3 and time.monotonic() < deadline:
        m, props, body = ch.basic_get("retry.work")
        if m is None:
            time.sleep(0.02)
            continue
        deaths = (props.headers or {}).get("x-death", [])
        rejected = [d for d in deaths if d["reason"] == "rejected"]
        attempts.append(rejected[0]["count"] if rejected else 0)
        if len(attempts) < 3:
            ch.basic_reject(m.delivery_tag, requeue=False)
        else:
            ch.basic_ack(m.delivery_tag)
    assert attempts == [0, 1, 2]
    for q in ("retry.work", "retry.wait"):
        ch.queue_delete(q)
    ch.exchange_delete("retry.x")


def test_alternate_exchange(ch):
    ch.exchange_declare("ae.unrouted", exchange_type="fanout")
    ch.exchange_declare("ae.main", exchange_type="direct",
                        arguments={"alternate-exchange": "ae.unrouted"})
    caught = ch.queue_declare("", exclusive=True).method.queue
    ok = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(caught, "ae.unrouted")
    ch.queue_bind(ok, "ae.main", "known")
    ch.basic_publish("ae.main", "known", b"routed")
    ch.basic_publish("ae.main", "unknown", b"alternate")
    assert [b for _, _, b in get_all(ch, ok)] == [b"routed"]
    assert [b for _, _, b in get_all(ch, caught)] == [b"alternate"]
    ch.exchange_delete("ae.main")
    ch.exchange_delete("ae.unrouted")


def test_cc_and_bcc(ch):
    qa = ch.queue_declare("", exclusive=True).method.queue
    qb = ch.queue_declare("", exclusive=True).method.queue
    qc = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", qa, b"m", pika.BasicProperties(headers={"CC": [qb], "BCC": [qc]}))
    for q in (qa, qb, qc):
        [(_, props, body)] = get_all(ch, q, n=1)
        assert body == b"m"
        assert "BCC" not in props.headers
        assert props.headers["CC"] == [qb]


def test_priority_queue(ch):
    q = ch.queue_declare("", exclusive=True, arguments={"x-max-priority": 5}).method.queue
    for body, prio in ((b"low", 1), (b"none", None), (b"high", 5), (b"over", 9), (b"mid", 3)):
        ch.basic_publish("", q, body, pika.BasicProperties(priority=prio))
    assert [b for _, _, b in get_all(ch, q)] == [b"high", b"over", b"mid", b"low", b"none"]


def test_consumer_priorities(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_qos(prefetch_count=2)
    got = {"low": 0, "high": 0}
    ch.basic_consume(q, lambda c, m, p, b: got.__setitem__("low", got["low"] + 1),
                     arguments={"x-priority": 1})
    ch.basic_consume(q, lambda c, m, p, b: got.__setitem__("high", got["high"] + 1),
                     arguments={"x-priority": 10})
    for _ in range(3):
        ch.basic_publish("", q, b"x")
    pump(conn, 1, until=lambda: sum(got.values()) == 3)
    # the high-priority consumer takes what its prefetch allows, the rest spills over
    assert got == {"high": 2, "low": 1}


def test_single_active_consumer(conn):
    ch = conn.channel()
    q = ch.queue_declare("sac_q", arguments={"x-single-active-consumer": True}).method.queue
    got = {"a": 0, "b": 0}
    ta = ch.basic_consume(q, lambda c, m, p, b: got.__setitem__("a", got["a"] + 1),
                          auto_ack=True)
    ch.basic_consume(q, lambda c, m, p, b: got.__setitem__("b", got["b"] + 1), auto_ack=True)
    for _ in range(4):
        ch.basic_publish("", q, b"x")
    pump(conn, 1, until=lambda: sum(got.values()) == 4)
    assert got == {"a": 4, "b": 0}
    ch.basic_cancel(ta)
    for _ in range(2):
        ch.basic_publish("", q, b"x")
    pump(conn, 1, until=lambda: got["b"] == 2)
    assert got == {"a": 4, "b": 2}
    ch.queue_delete(q)


def test_invalid_queue_arguments_refused(ch):
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare("bad_args", arguments={"x-overflow": "explode"})
    assert e.value.reply_code == 406 and "x-overflow" in e.value.reply_text


def test_direct_reply_to_rpc_round_trip(node):
    server = pika.BlockingConnection(pika.URLParameters(node.url))
    client = pika.BlockingConnection(pika.URLParameters(node.url))
    try:
        sch = server.channel()
        sch.queue_declare("drt_rpc")
        cch = client.channel()
        replies = []
        cch.basic_consume("amq.rabbitmq.reply-to", lambda c, m, p, b: replies.append((p, b)),
                          auto_ack=True)
        cch.basic_publish("", "drt_rpc", b"ping",
                          pika.BasicProperties(reply_to="amq.rabbitmq.reply-to",
                                               correlation_id="c-1"))
        m, props, body = None, None, None
        deadline = time.monotonic() + 3
        while m is None and time.monotonic() < deadline:
            m, props, body = sch.basic_get("drt_rpc", auto_ack=True)
        assert props.reply_to.startswith("amq.rabbitmq.reply-to.")
        sch.basic_publish("", props.reply_to, b"pong",
                          pika.BasicProperties(correlation_id=props.correlation_id))
        pump(client, 2, until=lambda: replies)
        assert [(p.correlation_id, b) for p, b in replies] == [("c-1", b"pong")]
        # passive declare of the pseudo-queue succeeds, as in RabbitMQ
        cch.queue_declare("amq.rabbitmq.reply-to", passive=True)
        sch.queue_delete("drt_rpc")
    finally:
        server.close()
        client.close()


def test_direct_reply_to_rules(conn):
    ch = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.basic_consume("amq.rabbitmq.reply-to", lambda *a: None, auto_ack=False)
    assert e.value.reply_code == 406
    ch = conn.channel()
    ch.basic_publish("", "anything", b"x",
                     pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare("", exclusive=True)
    assert e.value.reply_code == 406 and "fast reply consumer does not exist" in e.value.reply_text


def test_direct_reply_to_with_aio_pika(node):
    import asyncio

    import aio_pika

    async def main():
        conn = await aio_pika.connect(node.url)
        async with conn:
            ch = await conn.channel()
            req = await ch.declare_queue("drt_aio", auto_delete=True)

            async def serve(msg):
                async with msg.process():
                    await ch.default_exchange.publish(
                        aio_pika.Message(msg.body[::-1], correlation_id=msg.correlation_id),
                        routing_key=msg.reply_to)

            await req.consume(serve)
            cch = await conn.channel()
            reply_q = await cch.get_queue("amq.rabbitmq.reply-to", ensure=False)
            fut = asyncio.get_running_loop().create_future()

            async def on_reply(m):
                fut.set_result(m.body)

            await reply_q.consume(on_reply, no_ack=True)
            await cch.default_exchange.publish(
                aio_pika.Message(b"abc", reply_to="amq.rabbitmq.reply-to", correlation_id="1"),
                routing_key="drt_aio")
            assert await asyncio.wait_for(fut, 5) == b"cba"
    asyncio.run(main())
