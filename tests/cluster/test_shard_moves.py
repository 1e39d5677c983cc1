"""Moving one shard of a vhost with its messages (`warrenctl move_vhost V NODE --shard K`),
rebalancing a vhost's shard owners over the running nodes (`warrenctl rebalance`), and the
progress a move of a large store shows on a terminal."""

from __future__ import annotations

import subprocess
import sys

import pika

from tests.cluster.conftest import Cluster
from tests.nodeproc import REPO, NodeProcess


def ctl(node: NodeProcess, *args: str, timeout: float = 180) -> str:
    r = subprocess.run([sys.executable, "-m", "node.ctl", "--node", node.http_url, *args],
                       capture_output=True, text=True, cwd=REPO, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout


def placement(cluster: Cluster, node: NodeProcess, vhost: str) -> dict:
    code, body = cluster.http(node, "GET", f"/api/cluster/vhosts/{vhost}")
    assert code == 200, body
    return body  # type: ignore[return-value]


def owners(cluster: Cluster, node: NodeProcess, vhost: str) -> list[str]:
    return [s["owner"] for s in placement(cluster, node, vhost).get("shards", [])]


def make_vhost(cluster: Cluster, vhost: str, shards: int, replicas: int) -> None:
    n1 = cluster.nodes[0]
    cluster.wait_until(lambda: all(n["running"] for n in cluster.status(n1)["nodes"]),
                       what="every member running")
    code, body = cluster.http(n1, "PUT", f"/api/cluster/vhosts/{vhost}",
                              {"shards": shards, "replicas": replicas})
    assert code == 201, body
    code, body = cluster.http(n1, "PUT", f"/api/permissions/{vhost}/guest",
                              {"configure": ".*", "write": ".*", "read": ".*"})
    assert code in (201, 204), body
    for node in cluster.nodes:
        cluster.wait_until(lambda node=node: len(owners(cluster, node, vhost)) == shards
                           and all(owners(cluster, node, vhost)), what="shards known")


def connect(node: NodeProcess, vhost: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", node.amqp_port, vhost, connection_attempts=3))


def fill(node: NodeProcess, vhost: str, queue: str, count: int, size: int = 0) -> None:
    """Persistent messages with confirms, on ``node``'s shard (client-local placement)."""
    conn = connect(node, vhost)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(queue, durable=True)
    pad = b"x" * size
    for i in range(count):
        ch.basic_publish("", queue, f"{queue}-{i}-".encode() + pad,
                         pika.BasicProperties(delivery_mode=2), mandatory=True)
    conn.close()


def drain(node: NodeProcess, vhost: str, queue: str) -> list[str]:
    conn = connect(node, vhost)
    ch = conn.channel()
    got = []
    while True:
        method, _props, payload = ch.basic_get(queue, auto_ack=True)
        if method is None:
            break
        got.append(payload.decode().rsplit("-", 1)[0])
    conn.close()
    return got


def queue_row(cluster: Cluster, node: NodeProcess, vhost: str, queue: str) -> dict:
    code, body = cluster.http(node, "GET", f"/api/queues/{vhost}/{queue}")
    assert code == 200, body
    return body  # type: ignore[return-value]


def test_one_shard_moves_with_its_messages(cluster: Cluster):
    make_vhost(cluster, "mv", 3, 1)
    n1 = cluster.nodes[0]
    placed = owners(cluster, n1, "mv")
    source = cluster.by_name(placed[1])
    fill(source, "mv", "orders", 500)
    assert queue_row(cluster, n1, "mv", "orders")["shard"] == 1
    target = next(n for n in cluster.nodes if n.name not in (source.name,))
    out = ctl(n1, "move_vhost", "mv", target.name, "--shard", "1")
    assert f"Moving vhost \"mv\" shard 1 to node \"{target.name}\"" in out, out
    assert f"Moved: owner {target.name}" in out, out
    after = owners(cluster, n1, "mv")
    assert after == [placed[0], target.name, placed[2]]
    shard = placement(cluster, n1, "mv")["shards"][1]
    assert shard["epoch"] == 2
    cluster.wait_until(lambda: queue_row(cluster, target, "mv", "orders")["node"]
                       == target.name, what="the queue's node is the new owner")
    assert queue_row(cluster, target, "mv", "orders")["messages"] == 500
    assert drain(target, "mv", "orders") == [f"orders-{i}" for i in range(500)]
