"""Raft state never diverges.  Definition changes are driven from every
node at once (each node owns a vhost whose clients churn declares, binds and deletes) while
members are killed and restarted; at the end every node must hold the same definitions and
no follower may have cut entries it had already applied."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pika
import pytest

from tests.cluster.conftest import Cluster

CLIENTS_PER_NODE = 3
CHURN_SECONDS = 25.0


@pytest.fixture
def fresh_cluster(tmp_path):
    c = Cluster(tmp_path).start()
    yield c
    c.stop()


def churn(url: str, prefix: str, stop: threading.Event, counts: dict) -> None:
    i = 0
    while not stop.is_set():
        try:
            conn = pika.BlockingConnection(pika.URLParameters(url + "?socket_timeout=5"))
        except Exception:
            time.sleep(0.3)  # the owner is down: wait for it to come back
            continue
        try:
            ch = conn.channel()
            while not stop.is_set():
                name = f"{prefix}-{i}"
                ch.queue_declare(name, durable=True)
                ch.queue_bind(name, "amq.direct", name)
                if i % 2:
                    ch.queue_delete(name)
                i += 1
                counts[prefix] = i
        except Exception:
            time.sleep(0.1)  # 541 without quorum, or the node was killed: reconnect
        finally:
            try:
                conn.close()
            except Exception:
                pass


def digest(c: Cluster, node) -> str:
    code, defs = c.http(node, "GET", "/api/definitions")
    assert code == 200, defs
    assert isinstance(defs, dict)
    picked = {k: sorted(json.dumps(x, sort_keys=True) for x in defs.get(k, []))
              for k in ("vhosts", "users", "permissions", "policies", "queues", "exchanges",
                        "bindings")}
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()


def test_definitions_stay_identical_under_churn_and_restarts(fresh_cluster: Cluster):
    c = fresh_cluster
    n1 = c.nodes[0]
    for i, node in enumerate(c.nodes):
        vhost = f"stress{i}"
        code, out = c.http(n1, "PUT", f"/api/cluster/vhosts/{vhost}", {"owner": node.name})
        assert code == 201, out
        code, out = c.http(n1, "PUT", f"/api/permissions/{vhost}/guest",
                           {"configure": ".*", "write": ".*", "read": ".*"})
        assert code in (201, 204), out
    for i, node in enumerate(c.nodes):
        c.wait_until(lambda node=node, i=i: c.http(
            node, "GET", f"/api/permissions/stress{i}/guest")[0] == 200, what="permissions")

    stop = threading.Event()
    counts: dict[str, int] = {}
    threads = [threading.Thread(target=churn, args=(
        f"amqp://guest:guest@127.0.0.1:{node.amqp_port}/stress{i}", f"q{i}-{k}", stop, counts),
        daemon=True) for i, node in enumerate(c.nodes) for k in range(CLIENTS_PER_NODE)]
    for t in threads:
        t.start()
    try:
        time.sleep(CHURN_SECONDS / 5)
        # a follower dies and comes back, then the leader
        leader = c.leader(n1)
        follower = next(n for n in c.nodes if n is not leader)
        follower.kill()
        time.sleep(CHURN_SECONDS / 5)
        follower.start(60)
        time.sleep(CHURN_SECONDS / 5)
        leader = c.leader(follower) or leader
        leader.kill()
        time.sleep(CHURN_SECONDS / 5)
        leader.start(60)
        time.sleep(CHURN_SECONDS / 5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert sum(counts.values()) > 100, counts  # the churn did happen

    def settled() -> bool:
        st = [c.status(n) for n in c.nodes]
        return (len({s["commit_index"] for s in st}) == 1
                and len({s["last_applied"] for s in st}) == 1)
    c.wait_until(settled, timeout=60, what="every node applied the same log")
    digests = {n.name: digest(c, n) for n in c.nodes}
    assert len(set(digests.values())) == 1, digests
    for n in c.nodes:
        log = n.log_text()
        assert "truncating already-applied" not in log, f"{n.name} cut applied entries"
