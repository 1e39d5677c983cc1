"""Scenarios where WarrenMQ answered differently from RabbitMQ.  Every expected
answer here is what a RabbitMQ 3.10 node answered to the same scenario, run side by side
(see docs/RABBITMQ-VERSION.md for the version WarrenMQ follows where releases differ)."""

from __future__ import annotations

import time
import uuid

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker


def uid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:8]


def dead_letter_queue(ch) -> tuple[str, str]:
    """A fanout DLX bound to an exclusive queue: (exchange, queue)."""
    dlx, dlq = uid("dlx-"), uid("dlq-")
    ch.exchange_declare(dlx, "fanout", auto_delete=True)
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_bind(dlq, dlx)
    return dlx, dlq


def drain(ch, queue: str, wait: float = 0.1) -> list[tuple[str, list]]:
    """(body, [(reason, queue) of x-death]) of every message, in order."""
    time.sleep(wait)  # dead-lettering is asynchronous in RabbitMQ too
    out = []
    while True:
        m, props, body = ch.basic_get(queue, auto_ack=True)
        if m is None:
            return out
        deaths = (props.headers or {}).get("x-death") or []
        out.append((body.decode(), [(d["reason"], d["queue"]) for d in deaths]))


# --- 1. TTL 0 on arrival -------------------------------------------------------------
def test_expiration_zero_is_never_delivered_later(ch):
    for _ in range(20):
        q = uid("ttl0-")
        ch.queue_declare(q, exclusive=True)
        ch.basic_publish("", q, b"x", pika.BasicProperties(expiration="0"))
        assert ch.basic_get(q, auto_ack=True)[0] is None


def test_queue_ttl_zero_is_never_delivered_later(ch):
    q = uid("qttl0-")
    ch.queue_declare(q, exclusive=True, arguments={"x-message-ttl": 0})
    for _ in range(20):
        ch.basic_publish("", q, b"x")
        assert ch.basic_get(q, auto_ack=True)[0] is None


def test_queue_ttl_zero_dead_letters_on_arrival(ch):
    dlx, dlq = dead_letter_queue(ch)
    q = uid("qttl0d-")
    ch.queue_declare(q, exclusive=True,
                     arguments={"x-message-ttl": 0, "x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"a")
    assert drain(ch, dlq) == [("a", [("expired", q)])]


def test_reject_publish_acks_what_expires_on_arrival(ch):
    q = uid("rp-")
    ch.queue_declare(q, exclusive=True,
                     arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    for _ in range(3):  # RabbitMQ: ack, ack, ack (nothing stays to fill the queue)
        ch.basic_publish("", q, b"r", pika.BasicProperties(expiration="0"))


# --- 2. expired messages at the head after a basic.get ---------------------------------
def test_get_drops_expired_head_before_counting(ch):
    dlx, dlq = dead_letter_queue(ch)
    q = uid("head-")
    ch.queue_declare(q, exclusive=True, arguments={"x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"m1")
    ch.basic_publish("", q, b"m2", pika.BasicProperties(expiration="0"))
    m, _props, body = ch.basic_get(q)
    assert (body, m.message_count) == (b"m1", 0)
    ch.basic_reject(m.delivery_tag, requeue=False)
    # the expired message is dead-lettered first, then the rejected one
    assert drain(ch, dlq) == [("m2", [("expired", q)]), ("m1", [("rejected", q)])]


# --- 3. expired beats maxlen: what drop-head uncovers has expired ------------------------
def test_drop_head_then_expired_messages_it_uncovers(ch):
    dlx, dlq = dead_letter_queue(ch)
    q = uid("ml-")
    ch.queue_declare(q, exclusive=True,
                     arguments={"x-dead-letter-exchange": dlx, "x-max-length": 2})
    ch.basic_publish("", q, b"m0")
    ch.basic_publish("", q, b"m1", pika.BasicProperties(expiration="0"))
    ch.basic_publish("", q, b"m2")
    ch.basic_publish("", q, b"m3")
    assert drain(ch, dlq) == [("m0", [("maxlen", q)]), ("m1", [("expired", q)])]
    assert [b for b, _ in drain(ch, q, 0)] == ["m2", "m3"]


def test_requeued_expired_message_dropped_by_maxlen_is_maxlen(ch):
    # RabbitMQ drops the head for the length limit before it looks at expiry here
    dlx, dlq = dead_letter_queue(ch)
    q = uid("ml2-")
    ch.queue_declare(q, exclusive=True,
                     arguments={"x-dead-letter-exchange": dlx, "x-max-length": 1})
    ch.basic_publish("", q, b"a", pika.BasicProperties(expiration="100"))
    m = ch.basic_get(q)[0]
    time.sleep(0.3)
    ch.basic_publish("", q, b"b")
    ch.basic_nack(m.delivery_tag, requeue=True)
    assert drain(ch, dlq) == [("a", [("maxlen", q)])]
    assert [b for b, _ in drain(ch, q, 0)] == ["b"]


# --- 4. invalid expiration -------------------------------------------------------------
@pytest.mark.parametrize("value,why", [
    ("abc", "no_integer"),
    ("-1", "{value_negative,-1}"),
    ("1.5", '{leftover_string,".5"}'),
    ("", "no_integer"),
    (" 5", "no_integer"),
])
def test_invalid_expiration_closes_channel(conn, value, why):
    ch = conn.channel()
    q = uid("exp-")
    ch.queue_declare(q, exclusive=True)
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.basic_publish("", q, b"x", pika.BasicProperties(expiration=value))
        ch.queue_declare(q, passive=True)
    assert e.value.reply_code == 406
    assert e.value.reply_text == f"PRECONDITION_FAILED - invalid expiration '{value}': {why}"


@pytest.mark.parametrize("value", ["+5000", "05000"])
def test_expiration_with_sign_or_leading_zero_is_valid(ch, value):
    q = uid("exp-")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"x", pika.BasicProperties(expiration=value))
    assert ch.basic_get(q, auto_ack=True)[2] == b"x"


# --- 10-12: errors -----------------------------------------------------------------------
LOCKED = ("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{}' in vhost "
          "'/'. It could be originally declared on another connection or the exclusive "
          "property value does not match that of the original declaration.")


def closed_with(fn) -> tuple[int, str]:
    with pytest.raises(ChannelClosedByBroker) as e:
        fn()
    return e.value.reply_code, e.value.reply_text


@pytest.mark.parametrize("name", ["amq.nonexistent", "amq.direct"])
def test_deleting_any_amq_exchange_is_refused(conn, name):
    ch = conn.channel()
    assert closed_with(lambda: ch.exchange_delete(name)) == (
        403, f"ACCESS_REFUSED - deletion of system exchange '{name}' in vhost '/' not allowed")


def test_dead_letter_routing_key_needs_dead_letter_exchange(conn):
    ch = conn.channel()
    q = uid("dlrk-")
    assert closed_with(lambda: ch.queue_declare(
        q, exclusive=True, arguments={"x-dead-letter-routing-key": "k"})) == (
        406, f"PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' for queue '{q}' "
             f"in vhost '/': routing_key_but_no_dlx_defined")


@pytest.fixture
def others_exclusive(node):
    """Another connection's exclusive queue, bound to an exchange with key 'bound'."""
    c = pika.BlockingConnection(pika.URLParameters(node.url))
    ch = c.channel()
    q, x = uid("exq-"), uid("bx-")
    ch.queue_declare(q, exclusive=True)
    ch.exchange_declare(x, "direct", auto_delete=True)
    ch.queue_bind(q, x, "bound")
    yield q, x
    c.close()


def test_unbind_of_missing_binding_on_others_exclusive_queue_is_ok(conn, others_exclusive):
    q, x = others_exclusive
    ch = conn.channel()
    ch.queue_unbind(q, x, "nope")
    ch.queue_unbind(q, "no-such-exchange", "k")


def test_unbind_of_existing_binding_on_others_exclusive_queue_is_locked(conn, others_exclusive):
    q, x = others_exclusive
    ch = conn.channel()
    assert closed_with(lambda: ch.queue_unbind(q, x, "bound")) == (405, LOCKED.format(q))


def test_bind_others_exclusive_queue_checks_exchange_first(conn, others_exclusive):
    q, x = others_exclusive
    ch = conn.channel()
    assert closed_with(lambda: ch.queue_bind(q, "nox", "k")) == (
        404, "NOT_FOUND - no exchange 'nox' in vhost '/'")
    ch = conn.channel()
    assert closed_with(lambda: ch.queue_bind(q, x, "k2")) == (405, LOCKED.format(q))


# --- 15: what client suites tripped on -----------------------------------------------------
def test_owner_redeclaring_exclusive_queue_as_non_exclusive_is_locked(ch):
    q = uid("ex-")
    ch.queue_declare(q, exclusive=True)
    assert closed_with(lambda: ch.queue_declare(q, exclusive=False)) == (405, LOCKED.format(q))


def test_redeclaring_queue_as_exclusive_is_locked(conn):
    ch = conn.channel()
    q = uid("ne-")
    ch.queue_declare(q, auto_delete=True)
    assert closed_with(lambda: ch.queue_declare(q, exclusive=True, durable=True)) == (
        405, LOCKED.format(q))
    conn.channel().queue_delete(q)


# --- 9. durable auto-delete exchange whose last binding was to a transient queue ------------
def exchange_exists(conn, name: str) -> bool:
    ch = conn.channel()
    try:
        ch.exchange_declare(name, passive=True)
        return True
    except ChannelClosedByBroker as e:
        assert e.reply_code == 404
        return False


def wait_gone(conn, name: str) -> bool:
    for _ in range(50):  # the deletion goes through Raft after the unbind-ok
        if not exchange_exists(conn, name):
            return True
        time.sleep(0.05)
    return False


def test_durable_auto_delete_exchange_goes_with_last_transient_binding(conn):
    ch = conn.channel()
    x, q = uid("ad-"), uid("adq-")
    ch.exchange_declare(x, "direct", durable=True, auto_delete=True)
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, x, "k")
    ch.queue_unbind(q, x, "k")
    assert wait_gone(conn, x)


def test_durable_auto_delete_exchange_goes_when_its_transient_queue_goes(conn):
    ch = conn.channel()
    x, q = uid("ad2-"), uid("adq2-")
    ch.exchange_declare(x, "direct", durable=True, auto_delete=True)
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, x, "k")
    ch.queue_delete(q)
    assert wait_gone(conn, x)


def test_durable_auto_delete_exchange_stays_while_a_transient_binding_is_left(conn):
    # RabbitMQ 3.10: unbinding the durable queue leaves the exchange (the exclusive
    # queue's binding is still there)
    ch = conn.channel()
    x, qd, qt = uid("ad3-"), uid("adqd-"), uid("adqt-")
    ch.exchange_declare(x, "direct", durable=True, auto_delete=True)
    ch.queue_declare(qd, durable=True)
    ch.queue_declare(qt, exclusive=True)
    ch.queue_bind(qd, x, "k")
    ch.queue_bind(qt, x, "k")
    ch.queue_unbind(qd, x, "k")
    ch.queue_delete(qd)
    assert exchange_exists(conn, x)
    ch.basic_publish(x, "k", b"still routed")
    assert ch.basic_get(qt, auto_ack=True)[2] == b"still routed"
    ch.queue_unbind(qt, x, "k")
    assert wait_gone(conn, x)


# --- headers exchange: long string and byte array --------------------------------------
@pytest.mark.parametrize("bound, sent", [("abc", b"abc"), (b"abc", "abc")])
def test_headers_long_string_matches_byte_array(ch, bound, sent):
    # pika sends str as a long string and bytes as a byte array; RabbitMQ 3.10 routes
    # both ways (4.0 compares the values, both binaries, without their types)
    ch.confirm_delivery()
    x = uid("hx-")
    ch.exchange_declare(x, "headers", auto_delete=True)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, x, arguments={"k": bound})
    ch.basic_publish(x, "", b"m", pika.BasicProperties(headers={"k": sent}), mandatory=True)
    assert ch.basic_get(q, auto_ack=True)[2] == b"m"


# --- drop-head before TTL on arrival -----------------------------------------------------
def test_max_length_zero_and_ttl_zero_dead_letters_as_maxlen(ch):
    dlx, dlq = dead_letter_queue(ch)
    q = uid("q-")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-length": 0, "x-message-ttl": 0,
                                                    "x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"m")
    assert drain(ch, dlq) == [("m", [("maxlen", q)])]


# --- durable auto-delete exchange: gone before unbind-ok -------------------------------
@pytest.mark.parametrize("kind", ["queue", "exchange"])
def test_auto_delete_exchange_is_gone_before_unbind_ok(conn, kind):
    # its last binding was to a transient queue or exchange (one Raft never saw)
    durable = False
    ch = conn.channel()
    x, d = uid("ad7-"), uid("ad7d-")
    ch.exchange_declare(x, "direct", durable=True, auto_delete=True)
    if kind == "queue":
        ch.queue_declare(d, durable=durable, exclusive=not durable)
        ch.queue_bind(d, x, "k")
        ch.queue_unbind(d, x, "k")
    else:
        ch.exchange_declare(d, "fanout", durable=durable)
        ch.exchange_bind(d, x, "k")
        ch.exchange_unbind(d, x, "k")
    try:
        ch.basic_publish(x, "k", b"after unbind-ok")
        with pytest.raises(ChannelClosedByBroker) as e:
            ch.queue_declare(uid("amq.gen-none-"), passive=True)
        assert (e.value.reply_code, e.value.reply_text) == (
            404, f"NOT_FOUND - no exchange '{x}' in vhost '/'")
    finally:
        cleanup = conn.channel()
        if kind == "queue":
            cleanup.queue_delete(d)
        else:
            cleanup.exchange_delete(d)


# --- priority queues and expiration "0" --------------------------------------------------
def test_priority_queue_hands_out_expired_message_that_jumped_ahead(ch):
    # RabbitMQ checks for expired messages after a publish only when the queue held
    # nothing else: a higher-priority message with expiration "0" waits at the head
    q = uid("pq-")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-priority": 10})
    ch.basic_publish("", q, b"low", pika.BasicProperties(priority=1))
    ch.basic_publish("", q, b"high", pika.BasicProperties(priority=5, expiration="0"))
    m, _props, body = ch.basic_get(q, auto_ack=True)
    assert (body, m.message_count) == (b"high", 1)
    assert ch.basic_get(q, auto_ack=True)[2] == b"low"
    # behind a message of the same or a higher priority it is dropped after the fetch
    for first, second in ((5, 5), (5, 1)):
        ch.basic_publish("", q, b"first", pika.BasicProperties(priority=first))
        ch.basic_publish("", q, b"second", pika.BasicProperties(priority=second,
                                                                  expiration="0"))
        assert [ch.basic_get(q, auto_ack=True)[2] for _ in range(2)] == [b"first", None]


def test_priority_queue_expired_message_counts_towards_reject_publish(ch):
    ch.confirm_delivery()
    q = uid("pq-")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-priority": 10, "x-max-length": 2,
                                                    "x-overflow": "reject-publish"})
    ch.basic_publish("", q, b"low", pika.BasicProperties(priority=1))
    ch.basic_publish("", q, b"high", pika.BasicProperties(priority=5, expiration="0"))
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"third", pika.BasicProperties(priority=1))
    assert ch.queue_declare(q, passive=True).method.message_count == 2
