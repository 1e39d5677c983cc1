"""Moving one shard of a vhost with its messages (`warrenctl move_vhost V NODE --shard K`),
rebalancing a vhost's shard owners over the running nodes (`warrenctl rebalance`), and the
progress a move of a large store shows on a terminal."""

from __future__ import annotations

import re
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


def fill(node: NodeProcess, vhost: str, queue: str, count: int, size: int = 0,
         arguments: dict | None = None) -> None:
    """Persistent messages with confirms, on ``node``'s shard (client-local placement)."""
    conn = connect(node, vhost)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(queue, durable=True, arguments=arguments)
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
    """The queue as GET /api/queues shows it (once the node that answers, its shard's
    owner, has applied the declaration)."""
    got: list = []
    cluster.wait_until(lambda: got.append(cluster.http(
        node, "GET", f"/api/queues/{vhost}/{queue}")) or got[-1][0] == 200,
                       what=f"queue {queue} known")
    return got[-1][1]


def test_one_shard_moves_with_its_messages(cluster: Cluster):
    make_vhost(cluster, "mv", 3, 1)
    n1 = cluster.nodes[0]
    placed = owners(cluster, n1, "mv")
    source = cluster.by_name(placed[1])
    fill(source, "mv", "orders", 500)
    k = queue_row(cluster, n1, "mv", "orders")["shard"]  # one that ``source`` owns
    assert placed[k] == source.name
    target = next(n for n in cluster.nodes if n.name not in (source.name,))
    out = ctl(n1, "move_vhost", "mv", target.name, "--shard", str(k))
    assert f"Moving vhost \"mv\" shard {k} to node \"{target.name}\"" in out, out
    assert f"Moved: owner {target.name}" in out, out
    after = owners(cluster, n1, "mv")
    assert after == [target.name if i == k else o for i, o in enumerate(placed)]
    shard = placement(cluster, n1, "mv")["shards"][k]
    assert shard["epoch"] == 2
    rows = [line.split() for line in ctl(n1, "vhost_status", "mv").splitlines()[2:]]
    assert [r[:3] for r in rows] == [[str(i), o, "2" if i == k else "1"]
                                     for i, o in enumerate(after)], rows
    cluster.wait_until(lambda: queue_row(cluster, target, "mv", "orders")["node"]
                       == target.name, what="the queue's node is the new owner")
    assert queue_row(cluster, target, "mv", "orders")["messages"] == 500
    assert drain(target, "mv", "orders") == [f"orders-{i}" for i in range(500)]


def test_rebalance_spreads_shards_piled_on_one_node(cluster: Cluster):
    make_vhost(cluster, "rb", 3, 1)
    n1 = cluster.nodes[0]
    placed = owners(cluster, n1, "rb")
    balanced = {"x-queue-leader-locator": "balanced"}
    for k, owner in enumerate(placed):  # a queue with messages on every shard
        code, body = cluster.http(n1, "PUT", f"/api/queues/rb/q{k}",
                                  {"durable": True, "arguments": balanced})
        assert code == 201, body
        assert queue_row(cluster, n1, "rb", f"q{k}")["shard"] == k
        fill(cluster.by_name(owner), "rb", f"q{k}", 200, arguments=balanced)
    pile = cluster.by_name(placed[0])
    for k in (1, 2):
        if placed[k] == pile.name:
            continue
        code, body = cluster.http(n1, "POST", "/api/cluster/vhosts/rb/move",
                                  {"node": pile.name, "shard": k}, timeout=150)
        assert code == 200, body
    assert owners(cluster, n1, "rb") == [pile.name] * 3

    out = ctl(cluster.nodes[2], "rebalance", "rb")
    assert out.count("Moved: owner") == 2, out  # no more than needed
    after = owners(cluster, n1, "rb")
    assert sorted(after) == sorted(n.name for n in cluster.nodes), (after, out)
    for k in range(3):
        assert f"shard {k} from {pile.name}" in out or after[k] == pile.name, out
    assert "2 shards moved." in out, out
    for k, owner in enumerate(after):
        node = cluster.by_name(owner)
        cluster.wait_until(lambda node=node, k=k: queue_row(cluster, node, "rb", f"q{k}")
                           ["node"] == node.name, what="the queue's node")
        assert drain(node, "rb", f"q{k}") == [f"q{k}-{i}" for i in range(200)]
    # spread already: nothing to move, and the API says so
    code, body = cluster.http(n1, "POST", "/api/cluster/vhosts/rb/rebalance", {})
    assert code == 200 and body == {"moves": []}, body
    # every sharded vhost (the other tests' too), then nothing is left to move
    every = ctl(n1, "rebalance", "--all")
    assert "Rebalancing the shards of every sharded vhost" in every, every
    assert 'vhost "rb"' not in every and owners(cluster, n1, "rb") == after, every
    assert "Nothing to move" in ctl(n1, "rebalance", "--all")


def test_a_move_of_a_large_store_shows_its_progress(cluster: Cluster):
    make_vhost(cluster, "big", 3, 1)
    n1 = cluster.nodes[0]
    source = cluster.by_name(owners(cluster, n1, "big")[2])
    fill(source, "big", "blobs", 400, size=100_000)  # 40 MB
    k = queue_row(cluster, n1, "big", "blobs")["shard"]  # one that ``source`` owns
    target = next(n for n in cluster.nodes if n.name != source.name)
    out = ctl(target, "move_vhost", "big", target.name, "--shard", str(k))
    lines = [line for line in out.splitlines() if " copied, " in line]
    assert lines, out
    found = re.search(r"([\d.]+) MiB of about ([\d.]+) MiB copied, (\d+) records "
                      r"\(([\d.]+) (?:KiB|MiB)\) behind, about ([\d.]+) s left", lines[0])
    assert found, lines
    copied, total, _records, _lag, eta = (float(g) for g in found.groups())
    assert 0 < copied < 40 and total >= 38, lines[0]
    assert eta >= 0, lines[0]
    done = re.search(r"Moved: owner (\S+), epoch 2, publishers paused [\d.]+ ms, "
                     r"([\d.]+) MiB copied", out)
    assert done and done.group(1) == target.name, out
    assert float(done.group(2)) >= 38, out
    assert drain(target, "big", "blobs") == [f"blobs-{i}" for i in range(400)]


def test_a_rebalance_stops_at_the_first_move_that_fails(cluster: Cluster):
    make_vhost(cluster, "slow", 2, 1)
    n1 = cluster.nodes[0]
    placed = owners(cluster, n1, "slow")
    balanced = {"x-queue-leader-locator": "balanced"}
    for k, owner in enumerate(placed):  # 20 MB on each shard
        code, body = cluster.http(n1, "PUT", f"/api/queues/slow/s{k}",
                                  {"durable": True, "arguments": balanced})
        assert code == 201, body
        assert queue_row(cluster, n1, "slow", f"s{k}")["shard"] == k
        fill(cluster.by_name(owner), "slow", f"s{k}", 200, size=100_000,
             arguments=balanced)
    pile = cluster.by_name(placed[0])
    if placed[1] != pile.name:
        code, body = cluster.http(n1, "POST", "/api/cluster/vhosts/slow/move",
                                  {"node": pile.name, "shard": 1}, timeout=150)
        assert code == 200, body
    # the old owner's copy is one more than wanted: trimmed, so a move must copy again
    cluster.wait_until(lambda: all(not s["replicas"] for s in
                                   placement(cluster, n1, "slow")["shards"]),
                       what="one copy of each shard")

    # no 20 MB copy gets in sync within 50 ms: the first move fails, and the rebalance
    # stops there with one line that says which move and why
    r = subprocess.run([sys.executable, "-m", "node.ctl", "--node", n1.http_url,
                        "rebalance", "slow", "--timeout", "0.05"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert f"rebalance stopped: moving vhost 'slow' shard 1 from {pile.name} to " in line, line
    assert "did not get in sync within 0.05 s" in line and "moves made before: none" in line
    assert owners(cluster, n1, "slow") == [pile.name, pile.name]

    code, body = cluster.http(n1, "POST", "/api/cluster/vhosts/slow/rebalance", {},
                              timeout=150)
    assert code == 200, body
    (move,) = body["moves"]
    assert (move["vhost"], move["shard"], move["from"]) == ("slow", 1, pile.name), body
    assert move["to"] != pile.name and move["copied_bytes"] >= 20_000_000, body
    assert owners(cluster, n1, "slow") == [pile.name, move["to"]]
    for k, owner in enumerate([pile.name, move["to"]]):
        node = cluster.by_name(owner)
        cluster.wait_until(lambda node=node, k=k: queue_row(cluster, node, "slow", f"s{k}")
                           ["node"] == node.name, what="the queue's node")
        assert drain(node, "slow", f"s{k}") == [f"s{k}-{i}" for i in range(200)]
