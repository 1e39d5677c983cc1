"""Losing nodes and getting them back; a fourth node joins and is forgotten."""

from __future__ import annotations

import threading
import time

import pika
import pytest

from tests.cluster.conftest import SECRET, Cluster
from tests.cluster.harness import amqp_params, create_vhost, log_tails, wait_in_sync, wait_vhost
from tests.nodeproc import NodeProcess


@pytest.fixture
def fresh_cluster(tmp_path):
    c = Cluster(tmp_path).start()
    yield c
    c.stop()


def declare(cluster: Cluster, node: NodeProcess, name: str) -> int:
    return cluster.http(node, "PUT", f"/api/queues/%2F/{name}", {"durable": True})[0]


def test_leader_killed_changes_resume_and_node_catches_up(fresh_cluster: Cluster):
    c = fresh_cluster
    leader = c.leader(c.nodes[0])
    assert leader is not None
    survivors = [n for n in c.nodes if n is not leader]
    leader.kill()
    # a new leader is elected among the two survivors and changes go on
    c.wait_until(lambda: (ld := c.leader(survivors[0])) is not None and ld is not leader,
                 what="new leader")
    c.wait_until(lambda: declare(c, survivors[0], "after-failover") in (201, 204),
                 what="declare under the new leader")
    assert declare(c, survivors[1], "after-failover-2") in (201, 204)
    # the killed node comes back and catches up without manual steps
    leader.start(60)
    for q in ("after-failover", "after-failover-2"):
        c.wait_until(lambda q=q: c.http(leader, "GET", f"/api/queues/%2F/{q}")[0] == 200,
                     what=f"{q} on the restarted node")
    c.wait_until(lambda: all(n["running"] for n in c.status(leader)["nodes"]),
                 what="the restarted node linked to every member")


def test_a_replica_that_dies_with_the_raft_leader_stops_holding_confirms_after_the_election(
        tmp_path):
    """The Raft leader's node is also a replica of a vhost another node owns.  Killed, its
    replication session ends at once, but the owner's proposal to drop it from the in-sync
    set cannot commit: the leader that would commit it is gone.  The owner confirms on the
    other replica meanwhile, and asks again once a new leader is there; it once waited for
    the lag timeout (here 30 s, so that waiting shows), and every confirm with it."""
    c = Cluster(tmp_path, failover_timeout="30").start()
    try:
        leader = c.leader(c.nodes[0])
        assert leader is not None
        owner = next(n for n in c.nodes if n is not leader)
        create_vhost(c, "held", owner, 3)
        wait_in_sync(c, "held", 2)
        conn = pika.BlockingConnection(amqp_params(owner, "held", c.user, c.password))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("", "q", b"before", pika.BasicProperties(delivery_mode=2))
        leader.kill()
        confirmed = threading.Event()

        def publish() -> None:
            ch.basic_publish("", "q", b"after", pika.BasicProperties(delivery_mode=2))
            confirmed.set()
        # pika's blocking channel is used by this one thread at a time: the main thread
        # only waits on the event
        t = threading.Thread(target=publish, daemon=True)
        t.start()
        assert confirmed.wait(10), ("no confirm 10 s after the leader's death (the drop "
                                    "waited for the 30 s lag timeout)\n" + log_tails(c))
        # and the drop itself commits under the new leader, not at the lag timeout
        wait_vhost(c, "held", lambda st: leader.name not in st["in_sync"], via=[owner],
                   timeout=10, what="the dead replica out of the in-sync set")
        assert ch.basic_get("q", auto_ack=True)[2] == b"before"
        assert ch.basic_get("q", auto_ack=True)[2] == b"after"
        conn.close()
    finally:
        c.stop()


def test_minority_refuses_definition_changes_at_once(fresh_cluster: Cluster):
    c = fresh_cluster
    lonely = c.nodes[2]
    # make the lonely node own a vhost, so its clients are served locally; one copy only: a
    # replicated vhost's owner stops serving without a majority (the owner lease, as a
    # quorum queue's leader does), while one nobody else could take over keeps serving
    code, _ = c.http(c.nodes[0], "PUT", "/api/cluster/vhosts/lonely",
                     {"owner": lonely.name, "replicas": 1})
    assert code == 201
    c.http(c.nodes[0], "PUT", "/api/permissions/lonely/guest",
           {"configure": ".*", "write": ".*", "read": ".*"})
    c.wait_until(lambda: "lonely" in c.status(lonely)["vhosts"]
                 and c.http(lonely, "GET", "/api/permissions/lonely/guest")[0] == 200)
    conn = pika.BlockingConnection(pika.URLParameters(
        f"amqp://guest:guest@127.0.0.1:{lonely.amqp_port}/lonely"))
    ch = conn.channel()
    ch.queue_declare("kept", durable=True)
    ch.basic_publish("", "kept", b"before")
    for n in c.nodes[:2]:
        n.kill()
    time.sleep(1.0)
    # messages of a vhost this node owns keep flowing without a majority
    ch.basic_publish("", "kept", b"during")
    assert ch.basic_get("kept", auto_ack=True)[2] == b"before"
    assert ch.basic_get("kept", auto_ack=True)[2] == b"during"
    # but definition changes are refused, quickly and clearly, not left hanging
    t = time.monotonic()
    with pytest.raises((pika.exceptions.ConnectionClosedByBroker,
                        pika.exceptions.ChannelClosedByBroker)) as e:
        ch.queue_declare("refused", durable=True)
    assert time.monotonic() - t < 8
    assert e.value.reply_code == 541 and "quorum" in e.value.reply_text
    t = time.monotonic()
    code, body = c.http(lonely, "PUT", "/api/queues/lonely/refused-too", {"durable": True})
    assert time.monotonic() - t < 8
    assert code >= 500 and "quorum" in str(body)
    # the others come back: changes work again
    for n in c.nodes[:2]:
        n.start(60)
    c.wait_until(lambda: c.http(lonely, "PUT", "/api/queues/lonely/works-again",
                                {"durable": True})[0] in (201, 204), timeout=30,
                 what="changes after the majority returns")


def test_fourth_node_joins_and_is_forgotten(fresh_cluster: Cluster, tmp_path):
    c = fresh_cluster
    n1 = c.nodes[0]
    assert declare(c, n1, "before-join") in (201, 204)
    n4 = NodeProcess(tmp_path / "n4", name="n4@localhost", cluster_secret=SECRET)
    code, body = c.http(n1, "POST", "/api/cluster/nodes", {"raft_address": n4.raft_address})
    assert code == 201, body
    n4.settings["peers"] = ",".join([n.raft_address for n in c.nodes] + [n4.raft_address])
    c.nodes.append(n4)
    n4.start(60)
    # the newcomer has every definition, and every member sees it
    c.wait_until(lambda: c.http(n4, "GET", "/api/queues/%2F/before-join")[0] == 200,
                 what="definitions on the new node")
    c.wait_until(lambda: len(c.status(n1)["nodes"]) == 4, what="four members")
    assert declare(c, n4, "from-n4") in (201, 204)
    c.wait_until(lambda: c.http(c.nodes[1], "GET", "/api/queues/%2F/from-n4")[0] == 200)
    # forget it again: three members remain and keep working
    code, body = c.http(n1, "DELETE", "/api/cluster/nodes/n4@localhost")
    assert code == 204, body
    n4.stop()
    c.nodes.remove(n4)
    st = c.status(n1)
    assert sorted(n["name"] for n in st["nodes"]) == ["n1@localhost", "n2@localhost",
                                                       "n3@localhost"]
    assert declare(c, c.nodes[1], "after-forget") in (201, 204)
