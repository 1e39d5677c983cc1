"""Quorum queues (`x-queue-type: quorum`), as RabbitMQ 4.0 has them.  Texts and values
were observed on a RabbitMQ 3.10 node side by side; where 4.0 differs (the default delivery
limit of 20, no `x-delivery-count` on a first delivery, the vhost's default queue type
applied to AMQP declarations, an absent type meaning classic on redeclaration) the test
follows 4.0's source, as docs/RABBITMQ-VERSION.md records."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from tests.nodeproc import http_json

QUORUM = {"x-queue-type": "quorum"}


def uid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:8]


def refused(conn, **declare) -> tuple[int, str]:
    ch = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare(**declare)
    return e.value.reply_code, e.value.reply_text


def dead_letters(ch) -> tuple[str, str]:
    dlx, dlq = uid("dlx-"), uid("dlq-")
    ch.exchange_declare(dlx, "fanout", auto_delete=True)
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_bind(dlq, dlx)
    return dlx, dlq


# --- declaration -----------------------------------------------------------------------
@pytest.mark.parametrize("flags, prop", [
    ({"durable": False}, "non-durable"),
    ({"durable": True, "exclusive": True}, "exclusive-owner"),
    ({"durable": True, "auto_delete": True}, "auto-delete"),
    ({"durable": False, "exclusive": True}, "exclusive-owner"),
    ({"durable": False, "auto_delete": True}, "auto-delete"),
])
def test_quorum_queue_is_durable_shared_and_kept(conn, flags, prop):
    q = uid("qq-")
    assert refused(conn, queue=q, arguments=QUORUM, **flags) == (
        406, f"PRECONDITION_FAILED - invalid property '{prop}' for queue '{q}' in vhost '/'")


def test_quorum_queue_cannot_be_server_named(conn):
    assert refused(conn, queue="", durable=True, arguments=QUORUM) == (
        406, "PRECONDITION_FAILED - Cannot declare a server-named queue for type "
             "rabbit_quorum_queue")


@pytest.mark.parametrize("key, value", [
    ("x-max-priority", 10), ("x-queue-mode", "lazy"), ("x-queue-version", 2),
    ("x-queue-master-locator", "client-local"), ("x-max-age", "1D"),
    ("x-stream-max-segment-size-bytes", 1),
])
def test_arguments_quorum_queues_do_not_take_are_refused(conn, key, value):
    q = uid("qq-")
    assert refused(conn, queue=q, durable=True, arguments={**QUORUM, key: value}) == (
        406, f"PRECONDITION_FAILED - invalid arg '{key}' for queue '{q}' in vhost '/' of "
             "queue type rabbit_quorum_queue")


@pytest.mark.parametrize("key", ["x-delivery-limit", "x-dead-letter-strategy",
                                 "x-quorum-initial-group-size", "x-max-in-memory-length"])
def test_quorum_arguments_are_refused_on_classic_queues(conn, key):
    q = uid("cq-")
    value = "at-most-once" if key == "x-dead-letter-strategy" else 1
    assert refused(conn, queue=q, durable=True, arguments={key: value}) == (
        406, f"PRECONDITION_FAILED - invalid arg '{key}' for queue '{q}' in vhost '/' of "
             "queue type rabbit_classic_queue")


def test_arguments_quorum_queues_take(node, ch):
    q = uid("qq-")
    args = {**QUORUM, "x-delivery-limit": 3, "x-dead-letter-strategy": "at-least-once",
            "x-quorum-initial-group-size": 3, "x-max-in-memory-length": 5,
            "x-queue-leader-locator": "balanced", "x-overflow": "reject-publish",
            "x-single-active-consumer": True, "x-max-length": 10, "x-message-ttl": 60000,
            "x-expires": 600000}
    assert ch.queue_declare(q, durable=True, arguments=args).method.message_count == 0
    # the same declaration again is equivalent
    assert ch.queue_declare(q, durable=True, arguments=args).method.queue == q
    assert http_json(node.http_url, "GET", f"/api/queues/%2F/{q}")[1]["type"] == "quorum"


def test_invalid_dead_letter_strategy(conn):
    q = uid("qq-")
    assert refused(conn, queue=q, durable=True,
                   arguments={**QUORUM, "x-dead-letter-strategy": "bogus"}) == (
        406, f"PRECONDITION_FAILED - invalid arg 'x-dead-letter-strategy' for queue '{q}' in "
             "vhost '/': invalid_dlx_strategy")


@pytest.mark.parametrize("value, why", [
    ("foo", "invalid_queue_locator_arg"),
    ("min-masters", "invalid_queue_locator_arg"),
    (5, "{unacceptable_type,signedint}"),
])
def test_invalid_leader_locator(conn, value, why):
    # RabbitMQ 3.10's answers, seen on it; client-local, balanced and random are taken
    q = uid("qq-")
    assert refused(conn, queue=q, durable=True,
                   arguments={**QUORUM, "x-queue-leader-locator": value}) == (
        406, f"PRECONDITION_FAILED - invalid arg 'x-queue-leader-locator' for queue '{q}' in "
             f"vhost '/': {why}")
    ch = conn.channel()
    for good in ("client-local", "balanced", "random"):
        ch.queue_declare(uid("qq-"), durable=True,
                         arguments={**QUORUM, "x-queue-leader-locator": good})


def test_unknown_queue_type(conn):
    q = uid("q-")
    assert refused(conn, queue=q, durable=True, arguments={"x-queue-type": "bogus"}) == (
        406, f"PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue '{q}' in vhost '/': "
             "\"unsupported queue type 'bogus'\"")


def test_redeclaring_with_another_type_is_inequivalent(conn):
    ch = conn.channel()
    qq, cq = uid("qq-"), uid("cq-")
    ch.queue_declare(qq, durable=True, arguments=QUORUM)
    ch.queue_declare(cq, durable=True)
    # 4.0 writes the type into every declaration: no argument is classic
    ch.queue_declare(cq, durable=True, arguments={"x-queue-type": "classic"})
    assert refused(conn, queue=qq, durable=True) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{qq}' in vhost "
             "'/': received 'classic' but current is 'quorum'")
    assert refused(conn, queue=cq, durable=True, arguments=QUORUM) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{cq}' in vhost "
             "'/': received 'quorum' but current is 'classic'")


def test_management_api_shows_the_type(node, ch):
    qq, cq = uid("qq-"), uid("cq-")
    ch.queue_declare(qq, durable=True, arguments=QUORUM)
    ch.queue_declare(cq, durable=True)
    status, q = http_json(node.http_url, "GET", f"/api/queues/%2F/{qq}")
    assert status == 200
    assert (q["type"], q["arguments"], q["leader"], q["members"], q["online"]) == (
        "quorum", QUORUM, q["node"], [q["node"]], [q["node"]])
    status, c = http_json(node.http_url, "GET", f"/api/queues/%2F/{cq}")
    assert (c["type"], "leader" in c) == ("classic", False)
    status, body = http_json(node.http_url, "PUT", f"/api/queues/%2F/{uid('qq-')}",
                             {"durable": True, "auto_delete": True, "arguments": QUORUM})
    assert status == 400 and "invalid property 'auto-delete'" in body["reason"]


# --- delivery limit --------------------------------------------------------------------
def test_delivery_limit_counts_returns_then_dead_letters(ch):
    dlx, dlq = dead_letters(ch)
    q = uid("qq-")
    ch.queue_declare(q, durable=True, arguments={**QUORUM, "x-delivery-limit": 2,
                                                 "x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"poison", pika.BasicProperties(headers={"a": 1}))
    seen = []
    for _ in range(4):
        m, props, _body = ch.basic_get(q)
        if m is None:
            seen.append(None)
            break
        seen.append((m.redelivered, props.headers))
        ch.basic_nack(m.delivery_tag, requeue=True)
    assert seen == [(False, {"a": 1}), (True, {"a": 1, "x-delivery-count": 2 - 1}),
                    (True, {"a": 1, "x-delivery-count": 2}), None]
    m, props, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"poison"
    death = props.headers["x-death"][0]
    assert (death["reason"], death["queue"], death["count"], props.headers["a"],
            "x-delivery-count" in props.headers) == ("delivery_limit", q, 1, 1, False)
    assert props.headers["x-first-death-reason"] == "delivery_limit"


def test_default_delivery_limit_is_twenty(ch):
    q = uid("qq-")
    ch.queue_declare(q, durable=True, arguments=QUORUM)
    ch.basic_publish("", q, b"m")
    counts = []
    for _ in range(30):
        m, props, _body = ch.basic_get(q)
        if m is None:
            break
        counts.append((props.headers or {}).get("x-delivery-count", 0))
        ch.basic_reject(m.delivery_tag, requeue=True)
    # delivered 21 times, then dropped (no dead-letter exchange)
    assert counts == list(range(21))
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    # a classic queue has no delivery limit and adds no header
    cq = uid("cq-")
    ch.queue_declare(cq, durable=True)
    ch.basic_publish("", cq, b"m")
    for _ in range(25):
        m, props, _body = ch.basic_get(cq)
        assert props.headers is None
        ch.basic_nack(m.delivery_tag, requeue=True)
    assert ch.queue_declare(cq, passive=True).method.message_count == 1


def test_negative_delivery_limit_is_unlimited(ch):
    q = uid("qq-")
    ch.queue_declare(q, durable=True, arguments={**QUORUM, "x-delivery-limit": -1})
    ch.basic_publish("", q, b"m")
    for _ in range(25):
        m, _props, _body = ch.basic_get(q)
        ch.basic_nack(m.delivery_tag, requeue=True)
    m, props, _body = ch.basic_get(q, auto_ack=True)
    assert props.headers["x-delivery-count"] == 25


def test_delivery_limit_policy(node, ch):
    q = uid("qqpol-")
    status, _ = http_json(node.http_url, "PUT", f"/api/policies/%2F/{q}",
                          {"pattern": f"^{q}$", "definition": {"delivery-limit": 0},
                           "apply-to": "quorum_queues"})
    assert status in (201, 204)
    try:
        ch.queue_declare(q, durable=True, arguments=QUORUM)
        ch.basic_publish("", q, b"m")
        m, _props, _body = ch.basic_get(q)
        ch.basic_nack(m.delivery_tag, requeue=True)
        assert ch.basic_get(q)[0] is None  # the first return went past a limit of 0
    finally:
        http_json(node.http_url, "DELETE", f"/api/policies/%2F/{q}")


def test_closed_channel_returns_count(conn):
    ch = conn.channel()
    q = uid("qq-")
    ch.queue_declare(q, durable=True, arguments=QUORUM)
    ch.basic_publish("", q, b"m")
    ch2 = conn.channel()
    m, props, _body = ch2.basic_get(q)
    assert (m.redelivered, props.headers) == (False, None)
    ch2.close()
    m, props, _body = ch.basic_get(q, auto_ack=True)
    assert (m.redelivered, props.headers) == (True, {"x-delivery-count": 1})


# --- the vhost's default queue type ----------------------------------------------------
def test_vhost_default_queue_type(node):
    vhost = uid("dqt-")
    base = node.http_url
    assert http_json(base, "PUT", f"/api/vhosts/{vhost}",
                     {"default_queue_type": "quorum"})[0] in (201, 204)
    try:
        http_json(base, "PUT", f"/api/permissions/{vhost}/guest",
                  {"configure": ".*", "write": ".*", "read": ".*"})
        c = pika.BlockingConnection(pika.URLParameters(
            f"amqp://guest:guest@{node.host}:{node.amqp_port}/{quote(vhost, safe='')}"))
        try:
            ch = c.channel()
            ch.queue_declare("durable", durable=True)
            ch.queue_declare("transient", durable=False)
            ch.queue_declare("auto-delete", durable=True, auto_delete=True)
            excl = ch.queue_declare("", exclusive=True).method.queue
            ch.queue_declare("durable", durable=True)  # its own type again: equivalent
            shapes = {}
            for name in ("durable", "transient", "auto-delete", excl):
                q = http_json(base, "GET", f"/api/queues/{vhost}/{quote(name, safe='')}")[1]
                shapes[name] = (q["type"], q["arguments"])
            assert shapes == {
                "durable": ("quorum", QUORUM),
                "transient": ("classic", {"x-queue-type": "classic"}),
                "auto-delete": ("classic", {"x-queue-type": "classic"}),
                excl: ("classic", {"x-queue-type": "classic"})}
            with pytest.raises(ChannelClosedByBroker) as e:
                c.channel().queue_declare("", durable=True)
            assert e.value.reply_text == ("PRECONDITION_FAILED - Cannot declare a server-named "
                                          "queue for type rabbit_quorum_queue")
            assert http_json(base, "PUT", f"/api/queues/{vhost}/api-made",
                             {"durable": True})[0] == 201
            assert http_json(base, "GET", f"/api/queues/{vhost}/api-made")[1]["type"] == "quorum"
        finally:
            c.close()
    finally:
        http_json(base, "DELETE", f"/api/vhosts/{vhost}")


# --- across a restart ------------------------------------------------------------------
@pytest.fixture
def fresh(tmp_path):
    from tests.nodeproc import NodeProcess
    n = NodeProcess(tmp_path / "data").start()
    yield n
    n.stop()


def test_quorum_queue_keeps_every_message_and_its_count_across_a_restart(fresh):
    c = pika.BlockingConnection(pika.URLParameters(fresh.url))
    ch = c.channel()
    ch.queue_declare("qq", durable=True, arguments={**QUORUM, "x-delivery-limit": 3})
    ch.queue_declare("cq", durable=True)
    for q in ("qq", "cq"):
        # delivery-mode 1: a quorum queue keeps it anyway, as RabbitMQ's do
        ch.basic_publish("", q, b"transient", pika.BasicProperties(delivery_mode=1))
    m, _props, _body = ch.basic_get("qq")
    ch.basic_nack(m.delivery_tag, requeue=True)
    m, props, _body = ch.basic_get("qq")
    assert props.headers == {"x-delivery-count": 1}
    ch.basic_nack(m.delivery_tag, requeue=True)
    c.close()
    fresh.stop()
    fresh.start()
    c = pika.BlockingConnection(pika.URLParameters(fresh.url))
    ch = c.channel()
    assert ch.queue_declare("cq", durable=True).method.message_count == 0
    m, props, body = ch.basic_get("qq")
    assert (body, m.redelivered, props.headers) == (b"transient", True,
                                                    {"x-delivery-count": 2})
    ch.basic_nack(m.delivery_tag, requeue=True)
    m, props, body = ch.basic_get("qq")
    assert props.headers == {"x-delivery-count": 3}
    ch.basic_nack(m.delivery_tag, requeue=True)  # the fourth return: past the limit of 3
    assert ch.basic_get("qq")[0] is None
    c.close()


def test_warrenctl_add_vhost_with_default_queue_type_and_list_queues_type(node):
    from tests.integration.test_ctl_and_permissions import ctl
    vhost = uid("ctlq-")
    ctl(node, "add_vhost", vhost, "--default-queue-type", "quorum")
    try:
        status, v = http_json(node.http_url, "GET", f"/api/vhosts/{vhost}")
        assert (status, v["default_queue_type"]) == (200, "quorum")
        ctl(node, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        c = pika.BlockingConnection(pika.URLParameters(
            f"amqp://guest:guest@{node.host}:{node.amqp_port}/{vhost}"))
        c.channel().queue_declare("jobs", durable=True)
        c.close()
        out = ctl(node, "list_queues", "-p", vhost, "name", "type").stdout
        assert out.splitlines()[1].split() == ["jobs", "quorum"]
    finally:
        http_json(node.http_url, "DELETE", f"/api/vhosts/{vhost}")
