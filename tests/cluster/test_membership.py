"""Membership under operators' mistakes: a member restarted without its cluster settings, a
member whose Raft log was written outside the cluster, forgetting a node that owns vhosts,
and warrenctl's answers when a command cannot finish."""

from __future__ import annotations

import os
import subprocess
import sys

import pika
import pytest

from tests.cluster.conftest import SECRET, Cluster
from tests.cluster.harness import vhost_state, wait_epoch_change, wait_vhost
from tests.nodeproc import REPO, NodeProcess

EX_CONFIG = 78


def place(c: Cluster, vhost: str, owner: str, replicas: int) -> None:
    code, body = c.http(c.nodes[0], "PUT", f"/api/cluster/vhosts/{vhost}",
                        {"owner": owner, "replicas": replicas})
    assert code == 201, body
    code, body = c.http(c.nodes[0], "PUT", f"/api/permissions/{vhost}/guest",
                        {"configure": ".*", "write": ".*", "read": ".*"})
    assert code in (201, 204), body
    wait_vhost(c, vhost, lambda s: len(s["in_sync"]) == replicas - 1, what="replicas in sync")


def publish(node: NodeProcess, vhost: str, queue: str, count: int) -> None:
    params = pika.URLParameters(f"amqp://guest:guest@{node.host}:{node.amqp_port}/{vhost}")
    with pika.BlockingConnection(params) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(queue, durable=True)
        for i in range(count):
            ch.basic_publish("", queue, str(i).encode(),
                             pika.BasicProperties(delivery_mode=2))


def alone(node: NodeProcess) -> subprocess.CompletedProcess:
    """Run `node` as its env file left out: no peers, no cluster secret."""
    env = {k: v for k, v in node.env().items()
           if k not in ("WARREN_PEERS", "WARREN_CLUSTER_SECRET")}
    return subprocess.run([sys.executable, "-m", "node"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def ctl(node: NodeProcess, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "node.ctl", "--node", node.http_url, *args],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=200)


def test_a_member_restarted_without_its_settings_refuses_to_start(tmp_path):
    c = Cluster(tmp_path, replication_factor="3").start()
    try:
        n1, n2, n3 = c.nodes
        place(c, "orders", n1.name, 3)
        publish(n2, "orders", "perf.q0", 200)
        before = vhost_state(c, "orders")
        n1.kill()
        after = wait_epoch_change(c, "orders", before, via=[n2, n3])
        out = alone(n1)
        assert out.returncode == EX_CONFIG, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert "belongs to cluster" in lines[0] and "started without peers" in lines[0]
        assert n2.raft_address in lines[0]
        # with its settings it comes back as a member: one owner, everywhere
        n1.start(60)
        for node in c.nodes:
            st = wait_vhost(c, "orders", lambda s: n1.name in s["in_sync"], via=[node],
                            what=f"n1 back in sync, seen from {node.name}")
            assert (st["owner"], st["epoch"]) == (after["owner"], after["epoch"])
        # and every node's definitions agree with the leader's at the same log position
        c.http(n2, "PUT", "/api/queues/orders/after-rejoin", {"durable": True})
        for node in c.nodes:
            c.wait_until(lambda node=node: c.status(node)["definitions"]["checks"] > 0,
                         what=f"a digest check on {node.name}")
            assert c.status(node)["definitions"]["diverged"] is None
            code, body = c.http(node, "GET", "/api/health/checks/ready-to-serve-clients")
            assert code == 200, body
        ids = {c.status(node)["cluster_id"] for node in c.nodes}
        assert len(ids) == 1 and "" not in ids
    finally:
        c.stop()


def test_a_member_started_alone_on_data_without_a_record_forks_and_stays_out(tmp_path):
    c = Cluster(tmp_path, replication_factor="3").start()
    try:
        n1, n2, n3 = c.nodes
        place(c, "orders", n1.name, 3)
        before = vhost_state(c, "orders")
        n1.kill()
        after = wait_epoch_change(c, "orders", before, via=[n2, n3])
        # its cluster record gone (data of an older release, a careless cleanup): it comes
        # up alone, finds the cluster's members in its definitions, marks its log as
        # forked and stops, instead of serving its old copy as owner
        (n1.data_dir / "cluster.json").unlink()
        out = alone(n1)
        assert out.returncode == EX_CONFIG, out
        assert "written outside that cluster" in out.stderr, out.stderr
        # from then on it starts neither alone nor with its settings
        for attempt in (alone(n1), subprocess.run(
                [sys.executable, "-m", "node"], env=n1.env(), cwd=REPO,
                capture_output=True, text=True, timeout=60)):
            assert attempt.returncode == EX_CONFIG, attempt
            assert "was used outside its cluster" in attempt.stderr, attempt.stderr
        for node in (n2, n3):
            st = vhost_state(c, "orders", via=[node])
            assert (st["owner"], st["epoch"]) == (after["owner"], after["epoch"])
    finally:
        c.stop()


def test_a_node_holding_another_clusters_log_is_refused_when_it_joins(tmp_path):
    c = Cluster(tmp_path, replication_factor="3").start()
    stray = NodeProcess(tmp_path / "n4", name="n4@localhost", cluster_secret=SECRET)
    try:
        n1, n2, n3 = c.nodes
        stray.start(60)  # a cluster of its own: its log and record are not this cluster's
        code, _ = c.http(stray, "PUT", "/api/vhosts/orders", {})
        assert code == 201
        stray.stop()
        code, body = c.http(n1, "POST", "/api/cluster/nodes",
                            {"raft_address": stray.raft_address})
        assert code == 201, body
        stray.settings["peers"] = ",".join([n.raft_address for n in c.nodes]
                                           + [stray.raft_address])
        stray.launch()
        c.wait_until(lambda: "refused as members of another cluster" in stray.log_text(),
                     timeout=60, what="the stray node to say the cluster refuses it")
        c.wait_until(lambda: any("refused the messages of" in n.log_text() for n in c.nodes),
                     timeout=30, what="a member to log the refusal")
        with pytest.raises(TimeoutError):
            stray.wait(1)  # it waits; it never serves
        assert "orders" not in [v for v in c.status(n1)["vhosts"]]
        assert c.status(n1)["leader"] in [n.raft_address for n in c.nodes]
    finally:
        stray.stop()
        c.stop()


def test_forget_cluster_node_refuses_a_node_that_owns_vhosts(tmp_path):
    c = Cluster(tmp_path, replication_factor="1").start()
    try:
        n1, n2, n3 = c.nodes
        place(c, "orders", n3.name, 1)
        code, body = c.http(n1, "DELETE", f"/api/cluster/nodes/{n3.name}")
        assert code == 400, body
        # (it may own '/' too: the default vhost is the bootstrapping node's)
        assert "owns vhost" in body["reason"] and "'orders'" in body["reason"] \
            and "move" in body["reason"], body
        out = ctl(n1, "forget_cluster_node", n3.name)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert "owns vhost" in out.stderr and "'orders'" in out.stderr, out.stderr
        # down, with no copy that could take over: still refused, and it says why
        n3.kill()
        code, body = c.http(n1, "DELETE", f"/api/cluster/nodes/{n3.name}")
        assert code == 400, body
        assert "no unclean promotion" in body["reason"]
        assert vhost_state(c, "orders", via=[n1])["owner"] == n3.name
        assert n3.name in [n["name"] for n in c.status(n1)["nodes"]]
    finally:
        c.stop()


def test_a_move_that_cannot_finish_says_what_it_waited_for(tmp_path):
    c = Cluster(tmp_path, replication_factor="2").start()
    try:
        owner = c.leader(c.nodes[0])  # the paused target must not be the one Raft needs
        assert owner is not None
        place(c, "orders", owner.name, 2)
        target = next(n for n in c.nodes
                      if n.name not in [owner.name, *vhost_state(c, "orders")["replicas"]])
        target.pause()  # it never gets in sync
        out = ctl(owner, "move_vhost", "orders", target.name, "--timeout", "4")
        target.resume()
        assert out.returncode == 2, out
        assert "Traceback" not in out.stdout + out.stderr
        assert f"waiting for {target.name}" in out.stdout, out.stdout
        last = out.stderr.strip().splitlines()
        assert len(last) == 1, out.stderr
        assert "did not get in sync within 4 s" in last[0] and "stopped" in last[0], last
        assert vhost_state(c, "orders", via=[owner])["owner"] == owner.name
    finally:
        c.stop()
