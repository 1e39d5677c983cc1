"""`warrenctl verify_vhost` and POST /api/cluster/vhosts/{vhost}/verify: the digest of every
copy of a vhost at one offset, and whether they agree.  Three real nodes; a replica's copy
is then changed behind its back (the node stopped, one row written into its LMDB file, the
node started again), and the comparison must name that copy."""

from __future__ import annotations

import subprocess
import sys
from urllib.parse import quote

import lmdb
import pika
import pytest

from node.runtime.stores import store_dir_name
from storage.keys import SEQ_BYTES, queue_prefix
from tests.cluster.conftest import Cluster
from tests.cluster.harness import amqp_params, create_vhost, vhost_path, wait_in_sync
from tests.nodeproc import REPO, NodeProcess

VHOST = "checked"


def ctl(node: NodeProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.ctl", "--node", node.http_url, *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.fixture(scope="module")
def verified(tmp_path_factory: pytest.TempPathFactory):
    c = Cluster(tmp_path_factory.mktemp("verify")).start()
    try:
        create_vhost(c, VHOST, c.nodes[0], 3)
        wait_in_sync(c, VHOST, 2)
        conn = pika.BlockingConnection(amqp_params(c.nodes[0], VHOST))
        ch = conn.channel()
        ch.confirm_delivery()
        for i in range(200):
            ch.basic_publish("", "q", b"message %d" % i,
                             pika.BasicProperties(delivery_mode=2))
        for _ in range(30):  # deletes and delivered marks too
            method, _, _ = ch.basic_get("q")
            ch.basic_ack(method.delivery_tag)
        ch.basic_get("q")  # delivered, unacked: a mark
        conn.close()
        yield c
    finally:
        c.stop()


def verify(c: Cluster, via: NodeProcess) -> dict:
    code, report = c.http(via, "POST", vhost_path(VHOST) + "/verify", {}, timeout=60)
    assert code == 200, report
    assert isinstance(report, dict)
    return report


def test_the_copies_of_a_vhost_agree(verified: Cluster):
    c = verified
    report = verify(c, c.nodes[2])  # asked of a replica: relayed to the owner
    copies = {r["node"]: r for r in report["copies"]}
    assert set(copies) == {n.name for n in c.nodes}
    assert copies[c.nodes[0].name]["role"] == "owner"
    assert report["agree"] is True
    assert all(r["agree"] is True for r in copies.values()), report
    assert len({r["digest"] for r in copies.values()}) == 1
    assert {(r["epoch"], r["offset"]) for r in copies.values()} == {tuple(report["position"])}
    assert report["offset"] > 0
    r = ctl(c.nodes[1], "verify_vhost", VHOST)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert f"The 3 copies agree at offset {report['offset']}." in r.stdout
    assert report["copies"][0]["digest"] in r.stdout


def test_a_changed_copy_is_named(verified: Cluster):
    c = verified
    replica = c.nodes[1]
    before = verify(c, c.nodes[0])
    replica.stop()
    path = replica.data_dir / "vhosts" / store_dir_name(VHOST)
    env = lmdb.open(str(path), max_dbs=4, subdir=True)
    with env.begin(write=True) as txn:
        msgs = env.open_db(b"msgs", txn=txn, create=False)
        txn.put(queue_prefix("q") + (10 ** 9).to_bytes(SEQ_BYTES, "big"), b"not published",
                db=msgs)
    env.close()
    replica.start(60)
    c.wait_until(lambda: c.http(c.nodes[0], "GET", f"/api/vhosts/{quote(VHOST, safe='')}")[0]
                 == 200)
    wait_in_sync(c, VHOST, 2)
    report = verify(c, c.nodes[0])
    copies = {r["node"]: r for r in report["copies"]}
    assert report["agree"] is False
    assert [n for n, r in copies.items() if not r["agree"]] == [replica.name], report
    # same place in the history, other contents
    assert (copies[replica.name]["epoch"], copies[replica.name]["offset"]) == \
        tuple(report["position"])
    assert copies[replica.name]["digest"] != copies[c.nodes[0].name]["digest"]
    assert copies[c.nodes[2].name]["digest"] == copies[c.nodes[0].name]["digest"]
    assert before["offset"] <= report["offset"]
    r = ctl(c.nodes[2], "verify_vhost", VHOST)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert replica.name in r.stderr and "disagree" in r.stderr
