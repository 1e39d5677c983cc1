"""kombu (Celery's transport layer, py-amqp underneath) against a real node."""

from __future__ import annotations

import kombu
from kombu import Exchange, Queue


def test_kombu_producer_consumer(node):
    url = f"amqp://guest:guest@127.0.0.1:{node.amqp_port}//"
    exchange = Exchange("kombu_tasks", type="direct", durable=True)
    queue = Queue("kombu_tasks", exchange, routing_key="task", durable=True)
    with kombu.Connection(url) as conn:
        producer = conn.Producer(serializer="json")
        for i in range(20):
            producer.publish({"n": i}, exchange=exchange, routing_key="task", declare=[queue],
                             delivery_mode=2, retry=True)
        got = []

        def on_message(body, message):
            got.append(body["n"])
            message.ack()

        with conn.Consumer(queue, callbacks=[on_message], accept=["json"]):
            while len(got) < 20:
                conn.drain_events(timeout=5)
        assert got == list(range(20))
        queue(conn.channel()).delete()


def test_kombu_simple_queue_and_requeue(node):
    url = f"amqp://guest:guest@127.0.0.1:{node.amqp_port}//"
    with kombu.Connection(url) as conn:
        sq = conn.SimpleQueue("kombu_simple")
        sq.put({"hello": "world"})
        msg = sq.get(block=True, timeout=5)
        assert msg.payload == {"hello": "world"}
        msg.requeue()
        msg = sq.get(block=True, timeout=5)
        assert msg.payload == {"hello": "world"} and msg.delivery_info["redelivered"]
        msg.ack()
        sq.clear()
        sq.close()


def test_kombu_fanout_broadcast(node):
    url = f"amqp://guest:guest@127.0.0.1:{node.amqp_port}//"
    bcast = Exchange("kombu_bcast", type="fanout", durable=False, auto_delete=True)
    with kombu.Connection(url) as conn:
        queues = [Queue(f"kombu_b{i}", bcast, exclusive=True) for i in range(2)]
        got = []
        with conn.Consumer(queues, callbacks=[lambda b, m: (got.append(b), m.ack())]):
            conn.Producer().publish("hi", exchange=bcast, declare=[bcast])
            while len(got) < 2:
                conn.drain_events(timeout=5)
        assert got == ["hi", "hi"]
