"""RabbitMQ's tutorials, run with pika against a real node."""

from __future__ import annotations

import threading
import time
import uuid

import pika


def drain(ch, queue: str, n: int, timeout: float = 5.0) -> list[bytes]:
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            time.sleep(0.01)
            continue
        out.append(body)
    return out


def test_hello_world(ch):
    ch.queue_declare("hello")
    ch.basic_publish("", "hello", b"Hello World!")
    got = []

    def on_message(ch_, method, props, body):
        got.append(body)
        ch_.stop_consuming()

    ch.basic_consume("hello", on_message, auto_ack=True)
    ch.start_consuming()
    assert got == [b"Hello World!"]
    ch.queue_delete("hello")


def test_work_queues_round_robin_prefetch_one(node):
    conns = [pika.BlockingConnection(pika.URLParameters(node.url)) for _ in range(3)]
    try:
        pub = conns[0].channel()
        pub.queue_declare("task_queue", durable=True)
        for i in range(10):
            pub.basic_publish("", "task_queue", f"task {i}".encode(),
                              pika.BasicProperties(delivery_mode=2))
        received: dict[int, list[bytes]] = {1: [], 2: []}
        workers = []
        for w in (1, 2):
            c = conns[w].channel()
            c.basic_qos(prefetch_count=1)

            def cb(ch_, method, props, body, w=w):
                received[w].append(body)
                ch_.basic_ack(method.delivery_tag)

            c.basic_consume("task_queue", cb)
            workers.append(c)
        deadline = time.monotonic() + 10
        while sum(len(v) for v in received.values()) < 10 and time.monotonic() < deadline:
            for w in (1, 2):
                conns[w].process_data_events(time_limit=0.05)
        assert sorted(received[1] + received[2]) == sorted(f"task {i}".encode()
                                                           for i in range(10))
        # both workers got work, alternating as RabbitMQ does with prefetch 1
        assert len(received[1]) >= 3 and len(received[2]) >= 3
        pub.queue_delete("task_queue")
    finally:
        for c in conns:
            c.close()


def test_publish_subscribe_fanout(ch):
    ch.exchange_declare("logs", exchange_type="fanout")
    qs = [ch.queue_declare("", exclusive=True).method.queue for _ in range(3)]
    for q in qs:
        ch.queue_bind(q, "logs")
    ch.basic_publish("logs", "", b"log line")
    for q in qs:
        assert drain(ch, q, 1) == [b"log line"]
    ch.exchange_delete("logs")


def test_topic_routing(ch):
    ch.exchange_declare("topic_logs", exchange_type="topic")
    q_kern = ch.queue_declare("", exclusive=True).method.queue
    q_crit = ch.queue_declare("", exclusive=True).method.queue
    q_all = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q_kern, "topic_logs", "kern.*")
    ch.queue_bind(q_crit, "topic_logs", "*.critical")
    ch.queue_bind(q_all, "topic_logs", "#")
    for key in ("kern.critical", "kern.info", "auth.critical", "a.b.c", ""):
        ch.basic_publish("topic_logs", key, key.encode())
    assert drain(ch, q_kern, 2) == [b"kern.critical", b"kern.info"]
    assert drain(ch, q_crit, 2) == [b"kern.critical", b"auth.critical"]
    assert len(drain(ch, q_all, 5)) == 5
    ch.exchange_delete("topic_logs")


def test_direct_routing(ch):
    ch.exchange_declare("direct_logs", exchange_type="direct")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "direct_logs", "error")
    ch.queue_bind(q, "direct_logs", "warning")
    for sev in ("info", "warning", "error"):
        ch.basic_publish("direct_logs", sev, sev.encode())
    assert drain(ch, q, 2) == [b"warning", b"error"]
    assert drain(ch, q, 1, timeout=0.3) == []


def test_headers_exchange(ch):
    q_all = ch.queue_declare("", exclusive=True).method.queue
    q_any = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q_all, "amq.headers", arguments={"x-match": "all", "a": 1, "b": "two"})
    ch.queue_bind(q_any, "amq.headers", arguments={"x-match": "any", "a": 1, "b": "two"})
    ch.basic_publish("amq.headers", "", b"both", pika.BasicProperties(headers={"a": 1, "b": "two"}))
    ch.basic_publish("amq.headers", "", b"one", pika.BasicProperties(headers={"a": 1}))
    ch.basic_publish("amq.headers", "", b"none", pika.BasicProperties(headers={"c": 1}))
    assert drain(ch, q_all, 1) == [b"both"]
    assert drain(ch, q_any, 2) == [b"both", b"one"]
    assert drain(ch, q_all, 1, timeout=0.3) == []


def test_exchange_to_exchange_binding(ch):
    ch.exchange_declare("e2e.src", exchange_type="topic")
    ch.exchange_declare("e2e.dst", exchange_type="fanout")
    ch.exchange_bind("e2e.dst", "e2e.src", "orders.#")
    ch.exchange_bind("e2e.src", "e2e.dst", "")  # a cycle: must not loop
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "e2e.dst")
    ch.basic_publish("e2e.src", "orders.new", b"o1")
    ch.basic_publish("e2e.src", "invoices.new", b"i1")
    assert drain(ch, q, 2, timeout=1) == [b"o1"]
    ch.exchange_unbind("e2e.dst", "e2e.src", "orders.#")
    ch.basic_publish("e2e.src", "orders.new", b"o2")
    assert drain(ch, q, 1, timeout=0.3) == []
    ch.exchange_delete("e2e.src")
    ch.exchange_delete("e2e.dst")


def test_rpc_with_exclusive_reply_queue(node):
    server_conn = pika.BlockingConnection(pika.URLParameters(node.url))
    client_conn = pika.BlockingConnection(pika.URLParameters(node.url))
    try:
        sch = server_conn.channel()
        sch.queue_declare("rpc_queue")
        sch.basic_qos(prefetch_count=1)

        def on_request(ch_, method, props, body):
            n = int(body)
            ch_.basic_publish("", props.reply_to, str(n * n).encode(),
                              pika.BasicProperties(correlation_id=props.correlation_id))
            ch_.basic_ack(method.delivery_tag)

        sch.basic_consume("rpc_queue", on_request)
        stop = threading.Event()

        def serve():
            while not stop.is_set():
                server_conn.process_data_events(time_limit=0.05)

        t = threading.Thread(target=serve)
        t.start()
        try:
            cch = client_conn.channel()
            reply_q = cch.queue_declare("", exclusive=True).method.queue
            assert reply_q.startswith("amq.gen-")
            answers = {}

            def on_response(ch_, method, props, body):
                answers[props.correlation_id] = body

            cch.basic_consume(reply_q, on_response, auto_ack=True)
            corr = str(uuid.uuid4())
            cch.basic_publish("", "rpc_queue", b"7",
                              pika.BasicProperties(reply_to=reply_q, correlation_id=corr))
            deadline = time.monotonic() + 5
            while corr not in answers and time.monotonic() < deadline:
                client_conn.process_data_events(time_limit=0.05)
            assert answers[corr] == b"49"
        finally:
            stop.set()
            t.join()
        server_conn.channel().queue_delete("rpc_queue")
    finally:
        server_conn.close()
        client_conn.close()


def test_large_message_spans_frames(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    body = bytes(range(256)) * 4096  # 1 MiB: many body frames at frame_max 131072
    ch.basic_publish("", q, body)
    method, props, got = ch.basic_get(q, auto_ack=True)
    assert got == body


def test_properties_round_trip(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    props = pika.BasicProperties(content_type="application/json", content_encoding="utf-8",
                                 headers={"k": "v", "n": 42, "nested": {"a": [1, 2]}},
                                 delivery_mode=2, priority=3, correlation_id="c1",
                                 reply_to="r", expiration="60000", message_id="m1",
                                 timestamp=1700000000, type="t", user_id="guest",
                                 app_id="app")
    ch.basic_publish("", q, b"{}", props)
    method, got, body = ch.basic_get(q, auto_ack=True)
    for field in ("content_type", "content_encoding", "headers", "delivery_mode", "priority",
                  "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
                  "type", "user_id", "app_id"):
        assert getattr(got, field) == getattr(props, field), field
