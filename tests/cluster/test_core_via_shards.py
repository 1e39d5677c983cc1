"""The core integration tests on a sharded vhost, through a node that owns none of its
shards: every queue the tests declare lives on another node's shard (client-local falls
back to balanced there), so every publish, consume, get, ack and declare-ok goes over a
queue link to the queue's owner, and clients see nothing unusual."""

from __future__ import annotations

import pika
import pytest

from tests.cluster.conftest import Cluster
from tests.integration.test_aio_pika import *  # noqa: F401,F403
from tests.integration.test_basic_pika import *  # noqa: F401,F403
from tests.integration.test_declare import *  # noqa: F401,F403
from tests.integration.test_errors import *  # noqa: F401,F403
from tests.integration.test_extensions import *  # noqa: F401,F403
from tests.integration.test_kombu import *  # noqa: F401,F403
from tests.integration.test_tutorials_pika import *  # noqa: F401,F403


class ShardlessNode:
    """Looks like tests.nodeproc.NodeProcess to the imported tests: the node that runs no
    shard of '/' once '/' has two shards."""

    def __init__(self, cluster: Cluster) -> None:
        n1 = cluster.nodes[0]
        cluster.wait_until(lambda: all(n["running"] for n in cluster.status(n1)["nodes"]),
                           what="every member running")
        code, body = cluster.http(n1, "PUT", "/api/cluster/vhosts/%2F", {"shards": 2})
        assert code == 204, body

        def owners(node) -> set[str]:
            code, body = cluster.http(node, "GET", "/api/cluster/vhosts/%2F")
            shards = body.get("shards", []) if code == 200 else []
            return {s["owner"] for s in shards} if len(shards) == 2 else set()
        for node in cluster.nodes:
            cluster.wait_until(lambda node=node: len(owners(node)) == 2,
                               what=f"two shard owners known on {node.name}")
        self.target = next(n for n in cluster.nodes if n.name not in owners(n1))
        self.amqp_port = self.target.amqp_port
        self.http_port = self.target.http_port
        self.url = self.target.url
        self.http_url = self.target.http_url


@pytest.fixture(scope="module")
def node(cluster: Cluster):
    return ShardlessNode(cluster)


@pytest.fixture
def conn(node):
    c = pika.BlockingConnection(pika.URLParameters(node.url))
    yield c
    if c.is_open:
        c.close()


@pytest.fixture
def ch(conn):
    return conn.channel()


def test_the_queues_live_on_their_shards_owner(cluster: Cluster, node: ShardlessNode):
    """What the suites above do through the node without shards happens at the queues'
    owners: a message published there is at the owner, and any node consumes it."""
    conn = pika.BlockingConnection(pika.URLParameters(node.url))
    ch = conn.channel()
    ch.queue_declare("shard-proof", durable=True)
    ch.confirm_delivery()
    for i in range(10):
        ch.basic_publish("", "shard-proof", f"p-{i}".encode(),
                         pika.BasicProperties(delivery_mode=2))
    code, body = cluster.http(node.target, "GET", "/api/queues/%2F/shard-proof")
    assert code == 200, body
    owner = cluster.by_name(body["node"])  # type: ignore[index]
    assert owner is not node.target
    others = [n for n in cluster.nodes if n is not node.target]
    for n in others:  # the owner, and the third node, through its own link
        c = pika.BlockingConnection(pika.URLParameters(n.url))
        assert c.channel().queue_declare("shard-proof", passive=True).method.message_count == 10
        c.close()
    third = next(n for n in others if n is not owner)
    c = pika.BlockingConnection(pika.URLParameters(third.url))
    ch3 = c.channel()
    got = [ch3.basic_get("shard-proof", auto_ack=True)[2] for _ in range(10)]
    assert got == [f"p-{i}".encode() for i in range(10)]
    assert ch.queue_declare("shard-proof", passive=True).method.message_count == 0
    ch.queue_delete("shard-proof")
    c.close()
    conn.close()
