"""Three real `warren` processes: replicated definitions, vhost placement, any-node
access, losing and regaining nodes, membership changes, and the cluster secret."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time

import pika
import pytest

from tests.cluster.conftest import Cluster
from tests.nodeproc import REPO, NodeProcess


def ctl(node: NodeProcess, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "node.ctl", "--node", node.http_url, *args],
                       capture_output=True, text=True, cwd=REPO, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def amqp(node: NodeProcess, vhost: str = "/") -> pika.BlockingConnection:
    from urllib.parse import quote
    return pika.BlockingConnection(pika.URLParameters(
        f"amqp://guest:guest@127.0.0.1:{node.amqp_port}/{quote(vhost, safe='')}"))


def test_cluster_forms_and_reports_status(cluster: Cluster):
    # Raft links come up one by one after the nodes listen: wait for the full picture
    cluster.wait_until(lambda: all(n["running"] for n in cluster.status(cluster.nodes[1])["nodes"])
                       and sum(n["leader"] for n in cluster.status(cluster.nodes[1])["nodes"]) == 1,
                       what="all members connected, one leader")
    st = cluster.status(cluster.nodes[1])
    assert sorted(n["name"] for n in st["nodes"]) == ["n1@localhost", "n2@localhost",
                                                       "n3@localhost"]
    assert all(n["running"] for n in st["nodes"])
    assert sum(n["leader"] for n in st["nodes"]) == 1
    assert st["has_quorum"] and st["term"] >= 1 and st["commit_index"] > 0
    assert st["vhosts"]["/"]["owner"] in {n.name for n in cluster.nodes}
    out = ctl(cluster.nodes[2], "cluster_status")
    assert "n1@localhost" in out and "leader" in out


def test_definitions_made_on_one_node_appear_on_all(cluster: Cluster):
    n1, n2, n3 = cluster.nodes
    code, _ = cluster.http(n2, "PUT", "/api/queues/%2F/repl-q", {"durable": True})
    assert code in (201, 204)
    code, _ = cluster.http(n3, "PUT", "/api/exchanges/%2F/repl-x",
                           {"type": "topic", "durable": True})
    assert code in (201, 204)
    for n in cluster.nodes:
        cluster.wait_until(lambda n=n: cluster.http(n, "GET", "/api/queues/%2F/repl-q")[0]
                           == 200, what=f"queue on {n.name}")
        cluster.wait_until(lambda n=n: cluster.http(n, "GET", "/api/exchanges/%2F/repl-x")[0]
                           == 200, what=f"exchange on {n.name}")
    ctl(n1, "add_user", "carol", "pw")
    for n in cluster.nodes:
        cluster.wait_until(lambda n=n: "carol" in ctl(n, "list_users"), what="user")


def test_clients_on_any_node_reach_a_vhost_owned_by_another(cluster: Cluster):
    for owner in cluster.nodes:
        vhost = f"v-{owner.name.split('@')[0]}"
        ctl(cluster.nodes[0], "add_vhost", vhost, "--owner", owner.name)
        ctl(cluster.nodes[0], "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        cluster.wait_until(lambda v=vhost: all(
            v in cluster.status(n)["vhosts"] for n in cluster.nodes), what="vhost")
        assert cluster.owner_of(vhost).name == owner.name
        for entry in cluster.nodes:
            if entry is owner:
                continue
            c = amqp(entry, vhost)
            ch = c.channel()
            ch.confirm_delivery()
            ch.queue_declare("work", durable=True)
            for i in range(50):
                ch.basic_publish("", "work", str(i).encode(),
                                 pika.BasicProperties(delivery_mode=2))
            # the queue and its messages live on the owner, not on the node we talk to
            code, q = cluster.http(owner, "GET", f"/api/queues/{vhost}/work")
            assert code == 200 and q["messages"] == 50, q
            got = [int(ch.basic_get("work", auto_ack=True)[2]) for _ in range(50)]
            assert got == list(range(50))
            c.close()


def test_forwarded_connection_keeps_protocol_semantics(cluster: Cluster):
    owner = cluster.owner_of("/")
    entry = next(n for n in cluster.nodes if n is not owner)
    c = amqp(entry)
    ch = c.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("surely-missing", passive=True)
    assert e.value.reply_code == 404
    ch = c.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"exclusive via forwarding")
    assert ch.basic_get(q, auto_ack=True)[2] == b"exclusive via forwarding"
    c.close()


def test_cluster_secret_guards_raft_and_forwarding_ports(cluster: Cluster, tmp_path):
    n1 = cluster.nodes[0]
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = pickle.dumps(Exploit())
    import zlib
    for port in (n1.raft_port, n1.forward_port):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        for blob in (payload, zlib.compress(payload),
                     len(payload).to_bytes(4, "big") + payload):
            try:
                s.sendall(blob)
            except OSError:
                break
        time.sleep(0.3)
        s.close()
    time.sleep(0.5)
    assert not marker.exists()
    # and the node goes on serving definitions and clients
    code, _ = cluster.http(n1, "PUT", "/api/queues/%2F/after-attack", {"durable": True})
    assert code in (201, 204)
    c = amqp(n1)
    c.channel().queue_declare("after-attack", durable=True, passive=True)
    c.close()


def test_forward_port_refuses_a_wrong_secret(cluster: Cluster):
    import msgpack

    from node.clients.forwarding import MAGIC, NONCE_SIZE, client_proof, forward_key
    n1 = cluster.nodes[0]
    s = socket.create_connection(("127.0.0.1", n1.forward_port), timeout=5)
    hello = s.recv(len(MAGIC) + NONCE_SIZE)
    nonce = hello[len(MAGIC):]
    facts = msgpack.packb({"user": "guest", "vhost": "/", "channel_max": 1, "frame_max": 4096,
                           "heartbeat": 0})
    mine = os.urandom(NONCE_SIZE)
    s.sendall(len(facts).to_bytes(4, "big") + facts + mine
              + client_proof(forward_key("wrong secret"), nonce, mine, facts))
    s.settimeout(3)
    assert s.recv(100) == b""  # dropped without a word
    s.close()


def test_api_nodes_shows_members_leader_health_and_placement(cluster: Cluster):
    code, nodes = cluster.http(cluster.nodes[1], "GET", "/api/nodes")
    assert code == 200
    assert [n["name"] for n in nodes] == ["n1@localhost", "n2@localhost", "n3@localhost"]
    assert sum(n["leader"] for n in nodes) == 1
    for n in nodes:
        assert n["running"] and n["cluster_member"]
        assert n["mem_used"] > 0 and "disk_free" in n and "mem_alarm" in n  # its own figures
    owner = cluster.owner_of("/")
    assert "/" in next(n for n in nodes if n["name"] == owner.name)["owned_vhosts"]


def test_management_api_on_any_node_reaches_the_owner(cluster: Cluster):
    owner = cluster.owner_of("/")
    other = next(n for n in cluster.nodes if n is not owner)
    assert cluster.http(other, "PUT", "/api/queues/%2F/api-q", {"durable": True})[0] in (201, 204)
    # a declaration is visible on another node a moment later (as in RabbitMQ): wait for it
    cluster.wait_until(lambda: cluster.http(owner, "GET", "/api/queues/%2F/api-q")[0] == 200)
    code, r = cluster.http(other, "POST", "/api/exchanges/%2F/amq.default/publish",
                           {"properties": {}, "routing_key": "api-q", "payload": "via other",
                            "payload_encoding": "string"})
    assert code == 200 and r == {"routed": True}
    code, q = cluster.http(other, "GET", "/api/queues/%2F/api-q")
    assert code == 200 and q["messages"] == 1 and q["node"] == owner.name
    code, msgs = cluster.http(other, "POST", "/api/queues/%2F/api-q/get",
                              {"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"})
    assert code == 200 and [m["payload"] for m in msgs] == ["via other"]


def test_queue_lists_on_any_node_show_the_owners_figures(cluster: Cluster):
    owner = cluster.owner_of("/")
    other = next(n for n in cluster.nodes if n is not owner)
    c = amqp(owner)
    ch = c.channel()
    ch.queue_declare("listed-q", durable=True)
    for _ in range(3):
        ch.basic_publish("", "listed-q", b"x")
    c.close()
    code, rows = cluster.http(other, "GET", "/api/queues/%2F")
    assert code == 200
    row = next(r for r in rows if r["name"] == "listed-q")
    assert row["messages"] == 3 and row["node"] == owner.name
    code, rows = cluster.http(other, "GET", "/api/queues")
    assert next(r for r in rows if r["name"] == "listed-q")["messages"] == 3


def test_one_cluster_name_and_every_member_serves_every_vhost(cluster: Cluster):
    cluster.wait_until(lambda: all(n["running"] for n in cluster.status(cluster.nodes[0])["nodes"]),
                       what="all members connected")
    names = set()
    for n in cluster.nodes:
        code, body = cluster.http(n, "GET", "/api/cluster-name")
        assert code == 200
        names.add(body["name"])  # type: ignore[index]
        code, overview = cluster.http(n, "GET", "/api/overview")
        names.add(overview["cluster_name"])  # type: ignore[index]
        c = amqp(n)
        names.add(c._impl.server_properties["cluster_name"].decode()
                  if isinstance(c._impl.server_properties["cluster_name"], bytes)
                  else c._impl.server_properties["cluster_name"])
        c.close()
        code, vh = cluster.http(n, "GET", "/api/vhosts/%2F")
        assert vh["cluster_state"] == {m.name: "running" for m in cluster.nodes}  # type: ignore[index]
    assert len(names) == 1 and names.pop() in {m.name for m in cluster.nodes}
