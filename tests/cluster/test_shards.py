"""A vhost split into shards: each shard has an owner, epoch and replicas of its own,
spread over the nodes; a queue goes to the shard its leader locator picks; a shard fails
over alone, and clients of the vhost's other shards keep their connections."""

from __future__ import annotations

import threading
import time

import pika
import pika.exceptions
import pytest

from tests.cluster.conftest import Cluster, netns_cluster
from tests.cluster.harness import amqp_params, vhost_state, wait_epoch_change, wait_vhost


def _placement(cluster: Cluster, node, vhost: str) -> dict:
    code, body = cluster.http(node, "GET", f"/api/cluster/vhosts/{vhost}")
    assert code == 200, body
    return body


def _queue_shard(cluster: Cluster, node, vhost: str, queue: str) -> int:
    code, body = cluster.http(node, "GET", f"/api/queues/{vhost}/{queue}")
    assert code == 200, body
    return body["shard"]


def _connect(node, vhost: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", node.amqp_port, vhost, connection_attempts=3))


def _drain(ch, queue: str) -> list[int]:
    """Every message of ``queue`` by basic.get (auto-ack), as the ints their bodies are."""
    got = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return got
        got.append(int(body))


def _sharded(cluster: Cluster, vhost: str, count: int = 3) -> None:
    """Create ``vhost`` with ``count`` shards through the first node, guest may use it
    (owners go to running nodes only: a member still connecting would get none)."""
    n1 = cluster.nodes[0]
    cluster.wait_until(lambda: _all_running(cluster, n1), what="every member running")
    code, body = cluster.http(n1, "PUT", f"/api/cluster/vhosts/{vhost}", {"shards": count})
    assert code == 201, body
    _grant(cluster, n1, vhost)


def _grant(cluster: Cluster, node, vhost: str) -> None:
    code, body = cluster.http(node, "PUT", f"/api/permissions/{vhost}/guest",
                              {"configure": ".*", "write": ".*", "read": ".*"})
    assert code in (201, 204), body


def _all_running(cluster: Cluster, node) -> bool:
    """Every member registered (each registers itself through Raft when it starts) and
    reachable, as ``node`` sees them."""
    nodes = cluster.status(node)["nodes"]
    return len(nodes) == len(cluster.nodes) and all(n["running"] for n in nodes)


def test_shards_spread_over_the_nodes_and_queues_follow_their_locator(cluster: Cluster):
    n1, n2, n3 = cluster.nodes
    _sharded(cluster, "spread")
    cluster.wait_until(lambda: len(_placement(cluster, n3, "spread").get("shards", [])) == 3,
                       what="three shards known on n3")
    shards = _placement(cluster, n2, "spread")["shards"]
    assert [s["shard"] for s in shards] == [0, 1, 2]
    assert sorted(s["owner"] for s in shards) == sorted(n.name for n in cluster.nodes)
    assert all(s["epoch"] == 1 for s in shards)
    owner_of = {s["owner"]: s["shard"] for s in shards}

    # client-local (the default): on the shard the connecting node owns
    for node in cluster.nodes:
        conn = _connect(node, "spread")
        ch = conn.channel()
        ch.queue_declare(f"local-{node.name}", durable=True)
        ch.queue_declare(f"balanced-{node.name}", durable=True,
                         arguments={"x-queue-leader-locator": "balanced"})
        conn.close()
    for node in cluster.nodes:
        assert _queue_shard(cluster, n1, "spread", f"local-{node.name}") == owner_of[node.name]
    # balanced: three queues over three shards that each hold one already: one each
    balanced = sorted(_queue_shard(cluster, n1, "spread", f"balanced-{node.name}")
                      for node in cluster.nodes)
    assert balanced == [0, 1, 2]

    # grown live: the new shard gets an owner and an epoch of its own
    code, body = cluster.http(n3, "PUT", "/api/cluster/vhosts/spread", {"shards": 4})
    assert code == 204, body
    cluster.wait_until(lambda: len(_placement(cluster, n1, "spread")["shards"]) == 4,
                       what="a fourth shard")
    fourth = _placement(cluster, n1, "spread")["shards"][3]
    assert fourth["owner"] in {n.name for n in cluster.nodes} and fourth["epoch"] == 1
    code, body = cluster.http(n1, "PUT", "/api/cluster/vhosts/spread", {"shards": 2})
    assert code == 400 and "cannot be reduced" in body["reason"], body


def test_a_queue_on_the_connecting_nodes_shard_works_end_to_end(cluster: Cluster):
    n1, _n2, _n3 = cluster.nodes
    _sharded(cluster, "local")
    for node in cluster.nodes:
        cluster.wait_until(lambda node=node: len(
            _placement(cluster, node, "local").get("shards", [])) == 3, what="shards known")
        conn = _connect(node, "local")
        ch = conn.channel()
        ch.confirm_delivery()
        q = f"work-{node.name}"
        ch.queue_declare(q, durable=True)
        for i in range(50):
            ch.basic_publish("", q, f"{node.name}-{i}".encode(),
                             pika.BasicProperties(delivery_mode=2), mandatory=True)
        got = []
        for _ in range(50):
            method, _props, payload = ch.basic_get(q, auto_ack=False)
            assert method is not None
            got.append(payload.decode())
            ch.basic_ack(method.delivery_tag)
        assert got == [f"{node.name}-{i}" for i in range(50)]
        assert ch.queue_declare(q, passive=True).method.message_count == 0
        conn.close()


def _in_sync_everywhere(cluster: Cluster, node, vhost: str, count: int = 0) -> bool:
    shards = _placement(cluster, node, vhost).get("shards", [])
    return len(shards) >= max(count, 1) and all(len(s["in_sync"]) == 2 for s in shards)


def test_one_shard_fails_over_alone_and_other_shards_clients_keep_their_connections(
        tmp_path):
    cluster = Cluster(tmp_path).start()
    try:
        n1, n2, n3 = cluster.nodes
        _sharded(cluster, "fo")
        cluster.wait_until(lambda: _in_sync_everywhere(cluster, n1, "fo"), timeout=60,
                           what="every shard's replicas in sync")
        owners = {s["owner"]: s["shard"] for s in _placement(cluster, n1, "fo")["shards"]}
        conns = {}
        for node in cluster.nodes:
            conn = _connect(node, "fo")
            ch = conn.channel()
            ch.confirm_delivery()
            ch.queue_declare(f"q-{node.name}", durable=True)
            for i in range(200):
                ch.basic_publish("", f"q-{node.name}", str(i).encode(),
                                 pika.BasicProperties(delivery_mode=2), mandatory=True)
            conns[node.name] = (conn, ch)
        # the copies are in sync, so every confirmed message is on the replicas too
        n3.kill()
        lost = owners[n3.name]
        cluster.wait_until(
            lambda: _placement(cluster, n1, "fo")["shards"][lost]["owner"] != n3.name,
            timeout=60, what=f"shard {lost} failed over")
        moved = _placement(cluster, n1, "fo")["shards"][lost]
        assert moved["epoch"] == 2 and moved["owner"] in (n1.name, n2.name)
        for node in (n1, n2):  # the other shards' clients were never disconnected
            conn, ch = conns[node.name]
            assert conn.is_open
            for i in range(200, 250):
                ch.basic_publish("", f"q-{node.name}", str(i).encode(),
                                 pika.BasicProperties(delivery_mode=2), mandatory=True)
            assert ch.queue_declare(f"q-{node.name}", passive=True).method.message_count \
                == 250
            conn.close()
        # the failed shard's confirmed messages, all of them, in order, on its new owner
        new_owner = cluster.by_name(moved["owner"])
        conn = _connect(new_owner, "fo")
        ch = conn.channel()
        assert ch.queue_declare(f"q-{n3.name}", passive=True).method.message_count == 200
        assert _drain(ch, f"q-{n3.name}") == list(range(200))
        conn.close()
        # the killed owner returns as a replica of its old shard; every shard's copies agree
        n3.start()
        cluster.wait_until(lambda: _in_sync_everywhere(cluster, n1, "fo"), timeout=90,
                           what="every shard's copies in sync again")
        for k in range(3):
            code, report = cluster.http(n1, "POST", "/api/cluster/vhosts/fo/verify",
                                        {"shard": k})
            assert code == 200, report
            assert report["agree"] and report["shard"] == k, report
            assert len(report["copies"]) == 3, report
    finally:
        cluster.stop()


def test_exclusive_and_transient_queues_of_a_sharded_vhost_are_known_to_every_node(
        cluster: Cluster):
    n1, n2, n3 = cluster.nodes
    _sharded(cluster, "rpc")
    cluster.wait_until(lambda: len(_placement(cluster, n2, "rpc").get("shards", [])) == 3,
                       what="three shards known on n2")
    mine = next(s["shard"] for s in _placement(cluster, n1, "rpc")["shards"]
                if s["owner"] == n1.name)
    conn = _connect(n1, "rpc")
    ch = conn.channel()
    reply = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_declare("transient", durable=False)
    assert reply.startswith("amq.gen-")
    # every node knows both, on the connecting node's shard (client-local)
    for node in (n2, n3):
        code, row = cluster.http(node, "GET", f"/api/queues/rpc/{reply}")
        assert code == 200, row
        assert (row["exclusive"], row["durable"], row["node"], row["shard"]) == \
            (True, False, n1.name, mine)
        code, row = cluster.http(node, "GET", "/api/queues/rpc/transient")
        assert code == 200 and row["durable"] is False, row
    # another connection, on another node, is refused the exclusive queue (405)
    other = _connect(n2, "rpc")
    och = other.channel()
    try:
        och.queue_declare(reply, passive=True)
        raise AssertionError("another connection got an exclusive queue")
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 405, e
        assert "cannot obtain exclusive access to locked queue" in e.reply_text, e
    other.close()
    # its connection closes: the queue goes, on every node
    conn.close()
    for node in cluster.nodes:
        cluster.wait_until(
            lambda node=node: cluster.http(node, "GET", f"/api/queues/rpc/{reply}")[0] == 404,
            what=f"exclusive queue gone on {node.name}")
    assert cluster.http(n3, "GET", "/api/queues/rpc/transient")[0] == 200


def test_clients_of_a_moved_shard_go_on_publishing_on_the_same_connections(cluster: Cluster):
    n1, _n2, _n3 = cluster.nodes
    _sharded(cluster, "mv")
    cluster.wait_until(lambda: _in_sync_everywhere(cluster, n1, "mv"), timeout=60,
                       what="every shard's replicas in sync")
    shard = _placement(cluster, n1, "mv")["shards"][1]
    owner = cluster.by_name(shard["owner"])
    other = next(n for n in cluster.nodes if n is not owner)
    target = next(n for n in cluster.nodes if n not in (owner, other))
    clients = []
    for node in (owner, other):  # one on the shard's owner, one on another node
        conn = _connect(node, "mv")
        ch = conn.channel()
        ch.confirm_delivery()
        clients.append((conn, ch))
    clients[0][1].queue_declare("moving", durable=True)  # client-local: on the owner's shard
    assert _queue_shard(cluster, n1, "mv", "moving") == 1

    def publish(frm: int, to: int) -> None:
        for i in range(frm, to):
            _conn, ch = clients[i % 2]
            ch.basic_publish("", "moving", str(i).encode(),
                             pika.BasicProperties(delivery_mode=2), mandatory=True)
    publish(0, 100)
    code, body = cluster.http(n1, "POST", "/api/cluster/vhosts/mv/move",
                              {"node": target.name, "shard": 1})
    assert code == 200 and body["owner"] == target.name, body
    publish(100, 200)  # the same connections, the shard now elsewhere: nothing held
    for conn, _ch in clients:
        assert conn.is_open
        conn.close()
    conn = _connect(target, "mv")
    got = _drain(conn.channel(), "moving")
    conn.close()
    assert sorted(got) == list(range(200))


def test_a_consumer_follows_its_queue_to_and_from_its_own_node(cluster: Cluster):
    """The shard moves onto the consumer's node and away again: the consumer goes on (no
    basic.cancel), every message arrives, the unacked ones again with redelivered=true."""
    n1, _n2, _n3 = cluster.nodes
    _sharded(cluster, "follow")
    cluster.wait_until(lambda: _in_sync_everywhere(cluster, n1, "follow"), timeout=60,
                       what="every shard's replicas in sync")
    first = _placement(cluster, n1, "follow")["shards"][1]
    home = cluster.by_name(first["owner"])  # the queue's shard starts here
    here = next(n for n in cluster.nodes if n is not home)  # the consumer's node
    third = next(n for n in cluster.nodes if n not in (home, here))
    pub = _connect(home, "follow")
    pch = pub.channel()
    pch.confirm_delivery()
    pch.queue_declare("f", durable=True)  # client-local: shard 1, on home
    assert _queue_shard(cluster, n1, "follow", "f") == 1
    conn = _connect(here, "follow")
    ch = conn.channel()
    ch.basic_qos(prefetch_count=50)
    got: list[tuple[int, bool]] = []
    cancelled: list[str] = []
    pending: list[int] = []  # delivery tags left unacked on purpose

    def on_message(_ch, method, _props, body) -> None:
        got.append((int(body), method.redelivered))
        if int(body) % 10 == 9 and not method.redelivered:
            pending.append(method.delivery_tag)  # acked only after the next move
        else:
            ch.basic_ack(method.delivery_tag)
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    ch.basic_consume("f", on_message)

    def publish(frm: int, to: int) -> None:
        for i in range(frm, to):
            pch.basic_publish("", "f", str(i).encode(), pika.BasicProperties(delivery_mode=2))

    def pump_until(count: int) -> None:
        deadline = time.monotonic() + 30
        while {i for i, _ in got} != set(range(count)):
            assert time.monotonic() < deadline, repr((count, sorted(set(range(count)) - {i for i, _ in got})))
            conn.process_data_events(time_limit=0.1)
    publish(0, 50)
    pump_until(50)
    for target in (here, third):  # onto the consumer's node, then away from it
        code, body = cluster.http(n1, "POST", "/api/cluster/vhosts/follow/move",
                                  {"node": target.name, "shard": 1})
        assert code == 200 and body["owner"] == target.name, body
        for tag in pending:  # acks of deliveries made before the move: dropped quietly
            ch.basic_ack(tag)
        pending.clear()
        start = max(i for i, _ in got) + 1
        publish(start, start + 50)
        pump_until(start + 50)
    conn.process_data_events(time_limit=0.5)
    assert cancelled == [] and conn.is_open
    redelivered = {i for i, r in got if r}
    # what was unacked at a move came again, redelivered; nothing else did
    assert redelivered and all(i % 10 == 9 for i in redelivered), repr((sorted(redelivered), got))
    conn.close()
    pub.close()


def test_rpc_across_nodes_with_direct_reply_to_and_exclusive_reply_queues(cluster: Cluster):
    """A client on one node asks, a server on another answers: through direct reply-to
    (amq.rabbitmq.reply-to) and through an exclusive server-named reply queue."""
    n1, n2, _n3 = cluster.nodes
    _sharded(cluster, "rpc2")
    cluster.wait_until(lambda: len(_placement(cluster, n2, "rpc2").get("shards", [])) == 3,
                       what="three shards known on n2")
    server = _connect(n2, "rpc2")
    sch = server.channel()
    sch.queue_declare("requests", durable=True)

    def answer(_ch, method, props, body) -> None:
        sch.basic_publish("", props.reply_to, b"re:" + body,
                          pika.BasicProperties(correlation_id=props.correlation_id))
        sch.basic_ack(method.delivery_tag)
    sch.basic_consume("requests", answer)
    client = _connect(n1, "rpc2")
    cch = client.channel()
    replies: list[tuple[str, bytes]] = []
    cch.basic_consume("amq.rabbitmq.reply-to",
                      lambda _c, _m, props, body: replies.append((props.correlation_id, body)),
                      auto_ack=True)
    own = cch.queue_declare("", exclusive=True).method.queue
    cch.basic_consume(own, lambda _c, _m, props, body: replies.append(
        (props.correlation_id, body)), auto_ack=True)
    for i in range(20):
        reply_to = "amq.rabbitmq.reply-to" if i % 2 == 0 else own
        cch.basic_publish("", "requests", str(i).encode(),
                          pika.BasicProperties(reply_to=reply_to, correlation_id=str(i)))
    deadline = time.monotonic() + 30
    while len(replies) < 20:
        assert time.monotonic() < deadline, replies
        server.process_data_events(time_limit=0.05)
        client.process_data_events(time_limit=0.05)
    assert sorted(replies, key=lambda r: int(r[0])) == \
        [(str(i), f"re:{i}".encode()) for i in range(20)]
    client.close()
    server.close()


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_publishes_in_flight_to_a_lost_owner_go_to_the_new_owner_once(tmp_path, fault):
    """A publisher on another node keeps ~100 confirms in flight to a queue whose shard
    owner is killed (kill -9) or stopped (SIGSTOP: its link stays open until it times out,
    and the failover may come first): nothing is nacked; what was on its way waits for
    the new owner and goes there (sent again: the new owner does not enqueue twice what
    the old one had replicated), and every confirmed message is in the queue exactly
    once, in order.  A basic.get sent through the publisher's node just after the fault
    waits for the new owner too (no connection error)."""
    import asyncio

    import aio_pika

    cluster = Cluster(tmp_path).start()
    try:
        n1 = cluster.nodes[0]
        _sharded(cluster, "inflight")
        cluster.wait_until(lambda: _in_sync_everywhere(cluster, n1, "inflight"), timeout=60,
                           what="every shard's replicas in sync")
        leader = cluster.leader(n1)
        owners = {s["owner"]: s["shard"] for s in _placement(cluster, n1, "inflight")["shards"]}
        victim = next(n for n in cluster.nodes if n is not leader and n.name in owners)
        publisher = next(n for n in cluster.nodes if n is not victim)
        conn = _connect(victim, "inflight")
        conn.channel().queue_declare("far", durable=True)  # client-local: the victim's shard
        conn.close()
        assert _queue_shard(cluster, publisher, "inflight", "far") == owners[victim.name]

        acked: list[int] = []
        nacked: list[tuple[int, str]] = []
        got_during: list[object] = []

        def get_during_failover() -> None:
            try:
                conn = _connect(publisher, "inflight")
                ch = conn.channel()
                method, _props, body = ch.basic_get("far", auto_ack=False)
                got_during.append(body)
                ch.basic_nack(method.delivery_tag, requeue=True)  # back, for the count
                conn.close()
            except Exception as e:
                got_during.append(e)
        getter = threading.Thread(target=get_during_failover, daemon=True)

        async def publish() -> None:
            url = f"amqp://guest:guest@127.0.0.1:{publisher.amqp_port}/inflight"
            connection = await aio_pika.connect(url)
            channel = await connection.channel(publisher_confirms=True)
            room = asyncio.Semaphore(100)
            loop = asyncio.get_running_loop()
            killed_at: list[float] = []

            async def one(i: int) -> None:
                try:
                    await channel.default_exchange.publish(
                        aio_pika.Message(str(i).encode(),
                                         delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key="far", timeout=90)
                    acked.append(i)
                except Exception as e:  # a nack (DeliveryError) or anything else
                    nacked.append((i, repr(e)))
                finally:
                    room.release()
            tasks = []
            i = 0
            start = loop.time()
            while True:
                now = loop.time()
                if not killed_at and now - start > 1.0:
                    # with ~100 publishes on their way to it
                    victim.kill() if fault == "kill" else victim.pause()
                    killed_at.append(now)
                    getter.start()
                if killed_at and now - killed_at[0] > 3.0:
                    break
                await room.acquire()
                tasks.append(asyncio.ensure_future(one(i)))
                i += 1
            await asyncio.gather(*tasks)
            await connection.close()
        asyncio.run(publish())
        getter.join(60)
        assert got_during == [b"0"], got_during
        if fault == "stop":
            victim.resume()  # it finds its shard failed over, and steps down

        assert nacked == [], nacked[:5]
        assert acked, "nothing was confirmed"
        moved = _placement(cluster, publisher, "inflight")["shards"][owners[victim.name]]
        assert moved["owner"] != victim.name, moved
        conn = _connect(cluster.by_name(moved["owner"]), "inflight")
        got = _drain(conn.channel(), "far")
        conn.close()
        doubled = sorted({i for i in got if got.count(i) > 1})
        assert doubled == [], f"enqueued twice: {doubled[:20]} of {len(got)}"
        assert sorted(got) == sorted(acked), (len(got), len(acked))
        assert got == sorted(got), "the publisher's order into the queue was not kept"
    finally:
        cluster.stop()


@pytest.mark.timeout(300)
def test_a_cut_off_owner_of_shard_0_answers_its_clients_once_it_lost_the_shard(
        netns_lab, tmp_path):
    """The owner of a sharded vhost's shard 0 is cut off from the other nodes: its owner
    lease holds its clients (nothing read, nothing written) while it knows no Raft
    majority, and the majority fails shard 0 over meanwhile.  Healed, the node is no longer
    that shard's owner, and its clients, which stay connected, are served again: a remote
    consumer's next delivery, its basic.cancel-ok, channel.close-ok, connection.close-ok."""
    lab = netns_lab
    vhost = "cutshard"
    with netns_cluster(lab, tmp_path, replication_factor="3", failover_timeout="2") as c:
        c.wait_until(lambda: _all_running(c, c.nodes[0]), timeout=30,
                     what="every member running")
        code, body = c.http(c.nodes[0], "PUT", f"/api/cluster/vhosts/{vhost}",
                            {"shards": 3, "replicas": 3})
        assert code == 201, body
        code, body = c.http(c.nodes[0], "PUT", f"/api/permissions/{vhost}/{c.user}",
                            {"configure": ".*", "write": ".*", "read": ".*"})
        assert code in (201, 204), body
        for node in c.nodes:
            c.wait_until(lambda node=node: _in_sync_everywhere(c, node, vhost, 3),
                         timeout=60, what=f"every shard in sync, as {node.name} sees it")
        before = vhost_state(c, vhost)  # shard 0: the vhost's own record
        a = c.by_name(before["owner"])
        others = [n for n in c.nodes if n is not a]
        # a queue of a shard another node owns, consumed by a client of a (over a link)
        b = next(n for n in others
                 if any(s["owner"] == n.name for s in before["shards"]))
        conn_b = pika.BlockingConnection(amqp_params(b, vhost, c.user, c.password))
        ch_b = conn_b.channel()
        ch_b.queue_declare("far", durable=True)  # client-local: on b's shard
        ch_b.confirm_delivery()
        for i in range(3):
            ch_b.basic_publish("", "far", f"m-{i}".encode(),
                               pika.BasicProperties(delivery_mode=2))
        conn_a = pika.BlockingConnection(amqp_params(a, vhost, c.user, c.password))
        ch_a = conn_a.channel()
        got: list[bytes] = []
        tag = ch_a.basic_consume("far", lambda _ch, _m, _p, body: got.append(body),
                                 auto_ack=True)
        deadline = time.monotonic() + 30
        while len(got) < 3 and time.monotonic() < deadline:
            conn_a.process_data_events(time_limit=0.2)
        assert got == [b"m-0", b"m-1", b"m-2"]

        i = c.nodes.index(a)
        lab.cut(i)
        wait_epoch_change(c, vhost, before, via=others, timeout=60)
        lab.heal(i)
        wait_vhost(c, vhost, lambda s: s["owner"] != a.name, via=[a], timeout=60,
                   what=f"{a.name} knows it lost shard 0")
        ch_b.basic_publish("", "far", b"after", pika.BasicProperties(delivery_mode=2))

        # pika's blocking calls wait forever for an answer: run them in a thread, so that
        # one never answered fails the test instead of hanging it
        steps: list[str] = []

        def finish() -> None:
            end = time.monotonic() + 30
            while len(got) < 4 and time.monotonic() < end:
                conn_a.process_data_events(time_limit=0.2)
            steps.append(f"delivered {got[3:]!r}")
            ch_a.basic_cancel(tag)
            steps.append("cancel-ok")
            ch_a.close()
            steps.append("channel close-ok")
            conn_a.close()
            steps.append("connection close-ok")
        worker = threading.Thread(target=finish, name="client-of-a", daemon=True)
        worker.start()
        worker.join(60)
        assert steps == ["delivered [b'after']", "cancel-ok", "channel close-ok",
                         "connection close-ok"], f"the client of {a.name} got only {steps}"
        conn_b.close()
