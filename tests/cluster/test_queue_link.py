"""The queue link between nodes (node/shards/link.py), against a real three-node cluster:
the test process itself is the other node, with a `LinkClient` to the node that owns the
vhost, and checks what it does there with pika on the owner."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any

import pika
import pika.exceptions
import pytest

from node.amqp import spec
from node.amqp.frames import content_header_payload
from node.amqp.message import Message
from node.clients.forwarding import open_forward
from node.shards.link import LinkClient, LinkError, LinkLost, RemoteConsumer
from tests.cluster.conftest import SECRET, Cluster

VHOST = "/"


class LoopThread:
    """An event loop of the test's own, in a thread: the link's end lives there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Any, *args: Any) -> Any:
        async def call() -> Any:
            return fn(*args)
        return self.run(call())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Sink:
    """A remote consumer's deliveries, as a channel would take them (credit back at once)."""

    def __init__(self, link: LinkClient, ack: bool = False) -> None:
        self.link = link
        self.ack = ack  # ack each delivery as it arrives
        self.got: list[tuple[RemoteConsumer, int, bool, Message, int]] = []
        self.cancelled_tags: list[str] = []
        self.arrived = asyncio.Event()

    def delivery(self, rc: RemoteConsumer, did: int, redelivered: bool,
                 message: Message) -> None:
        self.got.append((rc, did, redelivered, message, self.link.generation))
        if self.ack:
            self.link.settle("ack", self.link.generation, did)
        self.link.credit(rc, 1)
        self.arrived.set()

    def cancelled(self, rc: RemoteConsumer, moved: bool = False) -> None:
        self.cancelled_tags.append(rc.tag)
        self.arrived.set()

    def lost(self, rc: RemoteConsumer) -> None:
        pass  # the link subscribes it again

    async def wait(self, n: int) -> None:
        while len(self.got) < n:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 20)


def message(body: bytes, persistent: bool = True, message_id: str = "") -> Message:
    props = spec.BasicProperties(delivery_mode=2 if persistent else 1,
                                 message_id=message_id or None)
    header = content_header_payload(60, len(body), props.encode())
    return Message.from_publish("", "ignored-by-the-link", header, body)


@pytest.fixture(scope="module")
def loop():
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture(scope="module")
def owner(cluster: Cluster):
    return cluster.owner_of(VHOST)


def open_link(loop: LoopThread, node: Any, secret: str = SECRET) -> LinkClient:
    address = f"{node.host}:{node.forward_port}"

    async def connect(addr: str, facts: dict) -> Any:
        return await open_forward(addr, secret, facts, timeout=5)

    async def start() -> LinkClient:
        client = LinkClient("test-node", node.name, lambda: address, connect).start()
        try:
            await client.ready()
        except BaseException:
            client.close()
            raise
        return client
    return loop.run(start())


@pytest.fixture
def link(loop: LoopThread, owner: Any):
    client = open_link(loop, owner)
    yield client
    loop.call(client.close)


@pytest.fixture
def ch(owner: Any):
    conn = pika.BlockingConnection(pika.URLParameters(owner.url))
    channel = conn.channel()
    yield channel
    if conn.is_open:
        conn.close()


def fresh_queue(ch: Any, name: str, **arguments: Any) -> str:
    ch.queue_delete(name)
    ch.queue_declare(name, durable=True, arguments=arguments or None)
    return name


def publish_all(loop: LoopThread, link: LinkClient, queues: list[str],
                messages: list[Message]) -> list[bool]:
    async def run() -> list[bool]:
        futs = [link.publish(VHOST, queues, m) for m in messages]
        return list(await asyncio.gather(*futs))
    return loop.run(run())


def test_publish_with_confirms_consume_and_ack(loop, link, ch):
    q = fresh_queue(ch, "link-pub")
    n = 300
    sent = [message(f"m-{i}".encode() * (i % 7 + 1), message_id=f"id-{i}") for i in range(n)]
    assert publish_all(loop, link, [q], sent) == [True] * n
    # the owner has them, durably, in publish order
    assert ch.queue_declare(q, passive=True).method.message_count == n
    assert loop.run(link.counts(VHOST, q)) == (n, 0)

    sink = Sink(link, ack=True)

    async def consume() -> RemoteConsumer:
        rc, subscribed = link.consume(VHOST, q, "ctag-1", 50, False, False, {}, sink)
        await subscribed
        await sink.wait(n)
        return rc
    rc = loop.run(consume())
    assert [m.body for _rc, _did, _r, m, _g in sink.got] == [m.body for m in sent]
    assert [m.properties.message_id for _rc, _did, _r, m, _g in sink.got] == \
        [f"id-{i}" for i in range(n)]
    assert [m.persistent for _rc, _did, _r, m, _g in sink.got] == [True] * n
    assert not any(r for _rc, _did, r, _m, _g in sink.got)
    assert len({did for _rc, did, _r, _m, _g in sink.got}) == n
    # acks, then counts, in the link's order: nothing left, one consumer
    assert loop.run(link.counts(VHOST, q)) == (0, 1)
    loop.call(link.cancel, rc)
    assert loop.run(link.counts(VHOST, q)) == (0, 0)
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_nack_requeue_comes_back_redelivered(loop, link, ch):
    q = fresh_queue(ch, "link-nack")
    bodies = [b"a", b"b", b"c"]
    assert publish_all(loop, link, [q], [message(b) for b in bodies]) == [True] * 3
    sink = Sink(link)

    async def run() -> None:
        _rc, subscribed = link.consume(VHOST, q, "ctag-2", 10, False, False, {}, sink)
        await subscribed
        await sink.wait(3)
        for _rc, did, _r, _m, gen in sink.got[:3]:
            link.settle("requeue", gen, did)
        await sink.wait(6)
        for _rc, did, _r, _m, gen in sink.got[3:]:
            link.settle("ack", gen, did)
    loop.run(run())
    assert [(m.body, r) for _rc, _d, r, m, _g in sink.got] == \
        [(b, False) for b in bodies] + [(b, True) for b in bodies]
    assert loop.run(link.counts(VHOST, q)) == (0, 1)


def test_reject_drops_the_message(loop, link, ch):
    q = fresh_queue(ch, "link-reject")
    assert publish_all(loop, link, [q], [message(b"x"), message(b"y")]) == [True, True]
    sink = Sink(link)

    async def run() -> None:
        _rc, subscribed = link.consume(VHOST, q, "ctag-r", 0, False, False, {}, sink)
        await subscribed
        await sink.wait(2)
        link.settle("reject", sink.got[0][4], sink.got[0][1])
        link.settle("ack", sink.got[1][4], sink.got[1][1])
    loop.run(run())
    assert loop.run(link.counts(VHOST, q)) == (0, 1)


def test_dropped_link_requeues_unacked_at_the_owner(loop, owner, ch):
    q = fresh_queue(ch, "link-drop")
    link = open_link(loop, owner)
    bodies = [f"d-{i}".encode() for i in range(5)]
    assert publish_all(loop, link, [q], [message(b) for b in bodies]) == [True] * 5
    sink = Sink(link)

    async def consume() -> None:
        _rc, subscribed = link.consume(VHOST, q, "ctag-3", 10, False, False, {}, sink)
        await subscribed
        await sink.wait(5)
    loop.run(consume())
    assert ch.queue_declare(q, passive=True).method.message_count == 0  # all unacked
    loop.call(link.close)  # the link is gone: the owner requeues what it delivered
    Cluster.wait_until(lambda: ch.queue_declare(q, passive=True).method.message_count == 5,
                       what="the owner requeued the dropped link's deliveries")
    got = []
    for _ in range(5):
        method, _props, body = ch.basic_get(q, auto_ack=True)
        got.append((body, method.redelivered))
    assert got == [(b, True) for b in bodies]


def test_link_reconnects_and_redelivers_and_old_acks_are_dropped(loop, link, ch):
    q = fresh_queue(ch, "link-reconnect")
    bodies = [f"r-{i}".encode() for i in range(4)]
    assert publish_all(loop, link, [q], [message(b) for b in bodies]) == [True] * 4
    sink = Sink(link)

    async def run() -> None:
        _rc, subscribed = link.consume(VHOST, q, "ctag-4", 10, False, False, {}, sink)
        await subscribed
        await sink.wait(4)
        gen = link.generation
        assert link.session is not None
        link.session.transport.abort()  # type: ignore[union-attr]
        while link.generation == gen or link.session is None:
            await asyncio.sleep(0.01)
        # late acks of the first deliveries: dropped (the owner requeued them already)
        for _rc, did, _r, _m, g in sink.got[:4]:
            link.settle("ack", g, did)
        await sink.wait(8)  # the consumer subscribed again: everything comes back
        for _rc, did, _r, _m, g in sink.got[4:]:
            link.settle("ack", g, did)
    loop.run(run())
    assert [(m.body, r) for _rc, _d, r, m, _g in sink.got] == \
        [(b, False) for b in bodies] + [(b, True) for b in bodies]
    assert loop.run(link.counts(VHOST, q)) == (0, 1)


def test_requests_in_flight_when_the_session_ends(loop, link, ch):
    q = fresh_queue(ch, "link-in-flight")
    assert publish_all(loop, link, [q], [message(b"1"), message(b"2")]) == [True, True]

    async def run() -> tuple[Any, Any]:
        counts = asyncio.ensure_future(link.counts(VHOST, q))
        get = asyncio.ensure_future(link.get(VHOST, q, True))
        await asyncio.sleep(0)  # both are on their way: the session ends under them
        link.session.transport.abort()  # type: ignore[union-attr]
        results = await asyncio.gather(counts, get, return_exceptions=True)
        return results[0], results[1]
    counts, get = loop.run(run())
    assert counts == (2, 0)  # idempotent: asked again on the next session
    assert isinstance(get, LinkLost)  # not: it may have taken a message
    assert loop.run(link.counts(VHOST, q))[0] in (1, 2)


def test_get_purge_and_counts(loop, link, ch):
    q = fresh_queue(ch, "link-get")
    bodies = [b"g1", b"g2", b"g3", b"g4", b"g5"]
    assert publish_all(loop, link, [q], [message(b) for b in bodies]) == [True] * 5
    msg, did, redelivered, count, gen = loop.run(link.get(VHOST, q, False))
    assert (msg.body, redelivered, count) == (b"g1", False, 4)
    loop.call(link.settle, "requeue", gen, did)
    msg, did, redelivered, count, gen = loop.run(link.get(VHOST, q, False))
    assert (msg.body, redelivered, count) == (b"g1", True, 4)
    loop.call(link.settle, "ack", gen, did)
    msg, _did, redelivered, count, _gen = loop.run(link.get(VHOST, q, True))
    assert (msg.body, redelivered, count) == (b"g2", False, 3)
    assert loop.run(link.purge(VHOST, q)) == 3
    assert loop.run(link.get(VHOST, q, True))[0] is None
    assert loop.run(link.counts(VHOST, q)) == (0, 0)
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_publish_to_several_queues_and_refusals(loop, link, ch):
    a = fresh_queue(ch, "link-multi-a")
    b = fresh_queue(ch, "link-multi-b")
    full = fresh_queue(ch, "link-full", **{"x-max-length": 1, "x-overflow": "reject-publish"})
    assert publish_all(loop, link, [a, b], [message(b"both")]) == [True]
    for q in (a, b):
        method, _props, body = ch.basic_get(q, auto_ack=True)
        assert (body, method.message_count) == (b"both", 0)
    # a length limit's reject-publish, a queue that does not exist: nacks
    assert publish_all(loop, link, [full], [message(b"1"), message(b"2")]) == [True, False]
    assert publish_all(loop, link, ["link-no-such-queue"], [message(b"x")]) == [False]
    assert ch.queue_declare(full, passive=True).method.message_count == 1
    with pytest.raises(LinkError) as e:
        loop.run(link.counts(VHOST, "link-no-such-queue"))
    assert e.value.code == 404 and "link-no-such-queue" in e.value.text


def test_owner_cancels_consumer_of_deleted_queue(loop, link, ch):
    q = fresh_queue(ch, "link-deleted")
    sink = Sink(link)

    async def consume() -> None:
        _rc, subscribed = link.consume(VHOST, q, "ctag-5", 0, True, False, {}, sink)
        await subscribed
    loop.run(consume())
    ch.queue_delete(q)

    async def cancelled() -> None:
        while not sink.cancelled_tags:
            sink.arrived.clear()
            await asyncio.wait_for(sink.arrived.wait(), 20)
    loop.run(cancelled())
    assert sink.cancelled_tags == ["ctag-5"]


def test_exclusive_consumer_is_refused_for_a_second_one(loop, link, ch):
    q = fresh_queue(ch, "link-excl")
    sink = Sink(link)

    async def run() -> None:
        _rc, first = link.consume(VHOST, q, "ctag-6", 0, False, True, {}, sink)
        await first
        _rc2, second = link.consume(VHOST, q, "ctag-7", 0, False, False, {}, sink)
        await second
    with pytest.raises(LinkError) as e:
        loop.run(run())
    assert e.value.code == 403 and "in exclusive use" in e.value.text


def test_a_node_that_does_not_own_the_queue_refuses_it(loop, cluster, owner, ch):
    q = fresh_queue(ch, "link-elsewhere")
    other = next(n for n in cluster.nodes if n is not owner)
    link = open_link(loop, other)
    try:
        # the other node knows the queue (a placeholder) but holds none of its messages
        assert publish_all(loop, link, [q], [message(b"lost?")]) == [False]
        with pytest.raises(LinkError) as e:
            loop.run(link.counts(VHOST, q))
        assert e.value.code == 404
    finally:
        loop.call(link.close)
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_link_without_the_cluster_secret_is_refused(loop, owner):
    with pytest.raises(ConnectionError):
        open_link(loop, owner, secret="not-the-secret")


# -----------------------------------------------------------------------------------------
# through clients: a sharded vhost served by every node (RemoteQueue over the links)
# -----------------------------------------------------------------------------------------
def _sharded_vhost(cluster: Cluster, name: str) -> dict[str, set[int]]:
    """A vhost of three shards; the shards each owner node owns."""
    n1 = cluster.nodes[0]
    cluster.wait_until(lambda: all(n["running"] for n in cluster.status(n1)["nodes"]),
                       what="every member running")
    code, body = cluster.http(n1, "PUT", f"/api/cluster/vhosts/{name}", {"shards": 3})
    assert code == 201, body
    code, body = cluster.http(n1, "PUT", f"/api/permissions/{name}/guest",
                              {"configure": ".*", "write": ".*", "read": ".*"})
    assert code in (201, 204), body

    def shards_known(node: Any) -> list[dict]:
        code, body = cluster.http(node, "GET", f"/api/cluster/vhosts/{name}")
        return body.get("shards", []) if code == 200 else []  # type: ignore[union-attr]
    for node in cluster.nodes:
        cluster.wait_until(lambda node=node: len(shards_known(node)) == 3,
                           what=f"three shards known on {node.name}")
    owned: dict[str, set[int]] = {}
    for s in shards_known(n1):
        owned.setdefault(s["owner"], set()).add(s["shard"])
    return owned


def _pump(conn: Any, done: Any, what: str, bound: float = 60) -> None:
    """Run the connection's I/O until ``done()``; fail (not hang) if that never comes."""
    deadline = time.monotonic() + bound
    while not done():
        assert time.monotonic() < deadline, f"never got {what}"
        conn.process_data_events(time_limit=0.5)


def _connect(node: Any, vhost: str) -> Any:
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", node.amqp_port, vhost, connection_attempts=3))


def test_publish_on_a_consume_on_c_to_a_queue_of_bs_shard(cluster: Cluster):
    shard_of = _sharded_vhost(cluster, "spread-link")
    # b owns a shard; a and c are the two other nodes (placement picks the owners)
    b = next(n for n in cluster.nodes if n.name in shard_of)
    a, c = [n for n in cluster.nodes if n is not b]
    # declared through b, client-local: on the shard b owns
    conn_b = _connect(b, "spread-link")
    ch_b = conn_b.channel()
    ch_b.queue_declare("on-b", durable=True)
    code, body = cluster.http(a, "GET", "/api/queues/spread-link/on-b")
    assert code == 200 and body["shard"] in shard_of[b.name], body  # type: ignore[index]

    # every node knows the queue (a declares it passively, through its link to b)
    conn_a = _connect(a, "spread-link")
    ch_a = conn_a.channel()
    cluster.wait_until(lambda: ch_a.queue_declare("on-b", passive=True) is not None,
                       what="the queue known on a")
    ch_a.confirm_delivery()
    n = 200
    for i in range(n):
        # pika raises on a nack or a return: each publish is confirmed
        ch_a.basic_publish("", "on-b", f"msg-{i}".encode(),
                           pika.BasicProperties(delivery_mode=2, message_id=str(i)),
                           mandatory=True)
    assert ch_a.queue_declare("on-b", passive=True).method.message_count == n
    assert ch_b.queue_declare("on-b", passive=True).method.message_count == n

    conn_c = _connect(c, "spread-link")
    ch_c = conn_c.channel()
    ch_c.basic_qos(prefetch_count=20)
    got: list[tuple[str, str, bool]] = []
    for method, props, body in ch_c.consume("on-b", inactivity_timeout=20):
        assert method is not None, f"only {len(got)} of {n} delivered"
        got.append((body.decode(), props.message_id, method.redelivered))
        ch_c.basic_ack(method.delivery_tag)
        if len(got) == n:
            break
    ch_c.cancel()
    assert got == [(f"msg-{i}", str(i), False) for i in range(n)]
    assert ch_a.queue_declare("on-b", passive=True).method.message_count == 0

    # nack with requeue from c: it comes back redelivered; get from a, count from b
    ch_a.basic_publish("", "on-b", b"again", pika.BasicProperties(delivery_mode=2))
    method, _props, body = ch_c.basic_get("on-b", auto_ack=False)
    assert (body, method.redelivered, method.message_count) == (b"again", False, 0)
    ch_c.basic_nack(method.delivery_tag, requeue=True)
    # c's next operation goes to b on the same link, after the nack: it is back then
    assert ch_c.queue_declare("on-b", passive=True).method.message_count == 1
    method, _props, body = ch_a.basic_get("on-b", auto_ack=False)
    assert (body, method.redelivered) == (b"again", True)
    ch_a.basic_ack(method.delivery_tag)
    assert ch_b.queue_declare("on-b", passive=True).method.message_count == 0
    assert ch_c.queue_purge("on-b").method.message_count == 0
    for conn in (conn_a, conn_b, conn_c):
        conn.close()


def test_fanout_over_shards_confirms_nacks_and_dead_letters(cluster: Cluster):
    shard_of = _sharded_vhost(cluster, "spread-fanout")
    b = next(n for n in cluster.nodes if n.name in shard_of)
    a = next(n for n in cluster.nodes if n is not b)
    conn_b = _connect(b, "spread-fanout")
    ch_b = conn_b.channel()
    ch_b.queue_declare("fan-b", durable=True)
    ch_b.queue_declare("full-b", durable=True,
                       arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch_b.queue_declare("dead-b", durable=True)
    conn_a = _connect(a, "spread-fanout")
    ch_a = conn_a.channel()
    # through a: on a's shard if it owns one, else on the least used one
    ch_a.queue_declare("fan-a", durable=True)
    ch_a.queue_declare("src-a", durable=True, arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead-b"})
    ch_a.exchange_declare("fan", "fanout", durable=True)
    ch_a.queue_bind("fan-a", "fan")
    ch_a.queue_bind("fan-b", "fan")
    ch_a.confirm_delivery()
    for i in range(20):
        ch_a.basic_publish("fan", "", f"f-{i}".encode(), pika.BasicProperties(delivery_mode=2),
                           mandatory=True)
    for q, ch in (("fan-a", ch_b), ("fan-b", ch_a)):  # each read through the other node
        got = []
        for _ in range(20):
            method, _props, body = ch.basic_get(q, auto_ack=True)
            got.append(body)
        assert got == [f"f-{i}".encode() for i in range(20)]
        assert ch.queue_declare(q, passive=True).method.message_count == 0

    # the owner refuses (reject-publish): the publisher on a gets a nack
    ch_a.basic_publish("", "full-b", b"first", pika.BasicProperties(delivery_mode=2))
    with pytest.raises(pika.exceptions.NackError):
        ch_a.basic_publish("", "full-b", b"second", pika.BasicProperties(delivery_mode=2))
    assert ch_b.queue_declare("full-b", passive=True).method.message_count == 1

    # dead-lettered where src-a lives, into a queue of b's shard
    ch_a.basic_publish("", "src-a", b"doomed", pika.BasicProperties(delivery_mode=2))
    method, _props, body = ch_a.basic_get("src-a", auto_ack=False)
    assert body == b"doomed"
    ch_a.basic_reject(method.delivery_tag, requeue=False)
    Cluster.wait_until(
        lambda: ch_b.queue_declare("dead-b", passive=True).method.message_count == 1,
        what="the dead-lettered message in dead-b")
    method, props, body = ch_b.basic_get("dead-b", auto_ack=True)
    assert body == b"doomed"
    death = props.headers["x-death"][0]
    assert (death["queue"], death["reason"], death["count"]) == ("src-a", "rejected", 1)
    for conn in (conn_a, conn_b):
        conn.close()


def test_global_prefetch_bounds_a_remote_consumer(cluster: Cluster):
    shard_of = _sharded_vhost(cluster, "spread-qos")
    b = next(n for n in cluster.nodes if n.name in shard_of)
    c = next(n for n in cluster.nodes if n is not b)
    conn_b = _connect(b, "spread-qos")
    ch_b = conn_b.channel()
    ch_b.queue_declare("qos-b", durable=True)
    ch_b.confirm_delivery()
    for i in range(20):
        ch_b.basic_publish("", "qos-b", str(i).encode(), pika.BasicProperties(delivery_mode=2))
    conn_c = _connect(c, "spread-qos")
    ch_c = conn_c.channel()
    ch_c.basic_qos(prefetch_count=5, global_qos=True)
    got: list[Any] = []
    ch_c.basic_consume("qos-b", lambda _ch, method, _props, body: got.append((method, body)))
    _pump(conn_c, lambda: len(got) >= 5, "5 deliveries")
    # the owner sent no more than the channel's window: the rest is still ready there
    assert ch_b.queue_declare("qos-b", passive=True).method.message_count == 15
    ch_c.basic_ack(got[-1][0].delivery_tag, multiple=True)
    _pump(conn_c, lambda: len(got) >= 10, "10 deliveries")
    assert ch_b.queue_declare("qos-b", passive=True).method.message_count == 10
    assert [body for _m, body in got] == [str(i).encode() for i in range(10)]
    conn_c.close()
    conn_b.close()


def test_global_prefetch_counts_local_and_remote_queues_together(cluster: Cluster):
    """basic.qos(global=true) bounds the channel's unacked deliveries over all its
    consumers, as on one node, when one queue is on this node's shard and one on another
    node's: a remote queue's owner is given credit first, then a local queue of the same
    channel starts; the client never holds more than the window, and every message of
    both comes once, each queue's in order."""
    shard_of = _sharded_vhost(cluster, "spread-gqos")
    b, c = [n for n in cluster.nodes if n.name in shard_of][:2]
    conn_b = _connect(b, "spread-gqos")
    ch_b = conn_b.channel()
    ch_b.queue_declare("gq-remote", durable=True)  # client-local: b's shard
    conn_c = _connect(c, "spread-gqos")
    ch_c = conn_c.channel()
    ch_c.queue_declare("gq-local", durable=True)  # c's shard
    for ch, q in ((ch_b, "gq-remote"), (ch_c, "gq-local")):
        ch.confirm_delivery()
        for i in range(20):
            ch.basic_publish("", q, f"{q}-{i}".encode(), pika.BasicProperties(delivery_mode=2))
    code, body = cluster.http(c, "GET", "/api/queues/spread-gqos/gq-remote")
    assert code == 200 and body["node"] == b.name, body  # type: ignore[index]
    code, body = cluster.http(c, "GET", "/api/queues/spread-gqos/gq-local")
    assert code == 200 and body["node"] == c.name, body  # type: ignore[index]

    ch_c.basic_qos(prefetch_count=5, global_qos=True)
    got: list[Any] = []
    seen: list[bytes] = []

    def on_message(_ch: Any, method: Any, _props: Any, body: bytes) -> None:
        got.append(method)
        seen.append(body)
    ch_c.basic_consume("gq-remote", on_message)
    ch_c.basic_consume("gq-local", on_message)
    _pump(conn_c, lambda: len(got) >= 5, "5 deliveries")
    conn_c.process_data_events(time_limit=1.0)  # anything past the window would come now
    assert len(got) == 5, seen
    # each ack makes room for exactly one more, from either queue, until all 40 came
    while len(seen) < 40:
        ch_c.basic_ack(got.pop(0).delivery_tag)
        _pump(conn_c, lambda: len(got) >= min(5, 40 - len(seen) + len(got)),
              f"delivery {len(seen) + 1}")
        conn_c.process_data_events(time_limit=0.05)
        assert len(got) <= 5, seen
    assert sorted(seen) == sorted(f"{q}-{i}".encode() for q in ("gq-remote", "gq-local")
                                  for i in range(20))
    # the remote queue's deliveries came in its order, and so did the local queue's
    for q in ("gq-remote", "gq-local"):
        assert [b for b in seen if b.startswith(q.encode())] == \
            [f"{q}-{i}".encode() for i in range(20)]
    ch_c.basic_ack(0, multiple=True)
    for ch, q in ((ch_b, "gq-remote"), (ch_c, "gq-local")):
        assert ch.queue_declare(q, passive=True).method.message_count == 0
    conn_c.close()
    conn_b.close()


def test_a_remote_consumer_follows_its_shard_to_a_new_owner(cluster: Cluster):
    shard_of = _sharded_vhost(cluster, "spread-move")
    b = next(n for n in cluster.nodes if n.name in shard_of)
    a, c = [n for n in cluster.nodes if n is not b]
    conn_b = _connect(b, "spread-move")
    ch_b = conn_b.channel()
    ch_b.queue_declare("mover", durable=True)
    code, body = cluster.http(b, "GET", "/api/queues/spread-move/mover")
    assert code == 200, body
    shard = body["shard"]  # type: ignore[index]
    ch_b.confirm_delivery()
    for i in range(30):
        ch_b.basic_publish("", "mover", f"m-{i}".encode(),
                           pika.BasicProperties(delivery_mode=2))
    conn_b.close()

    conn_c = _connect(c, "spread-move")
    ch_c = conn_c.channel()
    ch_c.basic_qos(prefetch_count=10)
    got: list[tuple[Any, bytes]] = []
    cancels: list[Any] = []
    ch_c.add_on_cancel_callback(cancels.append)
    ch_c.basic_consume("mover", lambda _ch, method, _props, body: got.append((method, body)))
    _pump(conn_c, lambda: len(got) >= 10, "10 deliveries")
    # the shard moves to a (with its messages) while c holds ten unacked deliveries
    code, body = cluster.http(a, "POST", "/api/cluster/vhosts/spread-move/move",
                              {"node": a.name, "shard": shard}, timeout=60)
    assert code == 200, body
    def owner_on_c() -> Any:
        code, body = cluster.http(c, "GET", "/api/queues/spread-move/mover")
        return body["node"] if code == 200 else None  # type: ignore[index]
    Cluster.wait_until(lambda: owner_on_c() == a.name, what="the queue's new owner known on c")
    # the consumer follows: the ten come again, redelivered, then the twenty others
    acked: set[int] = set()

    def ack_new() -> bool:
        for method, _body in got:
            if method.delivery_tag > 10 and method.delivery_tag not in acked:
                ch_c.basic_ack(method.delivery_tag)
                acked.add(method.delivery_tag)
        return len(got) >= 40
    _pump(conn_c, ack_new, "the ten redelivered and the twenty others")
    ch_c.basic_ack(got[9][0].delivery_tag, multiple=True)  # the old ones: dropped quietly
    assert cancels == []
    assert [(b, m.redelivered) for m, b in got[:10]] == [(f"m-{i}".encode(), False)
                                                           for i in range(10)]
    assert [(b, m.redelivered) for m, b in got[10:20]] == [(f"m-{i}".encode(), True)
                                                             for i in range(10)]
    assert [(b, m.redelivered) for m, b in got[20:]] == [(f"m-{i}".encode(), False)
                                                           for i in range(10, 30)]
    assert ch_c.queue_declare("mover", passive=True).method.message_count == 0
    assert conn_c.is_open
    conn_c.close()
