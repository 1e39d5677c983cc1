"""The fault-test harness checked on its own, without faults: what the replication tests
count on (every confirmed id comes back, through any node) and what the partition tests
count on (a cut-off node is really cut off from its peers, and only from them)."""

from __future__ import annotations

import time

import pika
import pytest

from tests.cluster.conftest import Cluster, netns_cluster
from tests.cluster.harness import (
    Publishers,
    amqp_params,
    assert_confirmed_present,
    create_vhost,
    drain,
)


@pytest.fixture
def fresh_cluster(tmp_path):
    c = Cluster(tmp_path).start()
    yield c
    c.stop()


def test_publish_and_drain_through_every_node_without_faults(fresh_cluster: Cluster):
    c = fresh_cluster
    create_vhost(c, "plain", owner=c.nodes[1], replicas=3)
    pubs = Publishers(c.nodes, "plain", "q", rotate_every=150).start()
    pubs.wait_confirms(1500, what="three publishers")
    pubs.stop()
    s = pubs.summary()
    assert s["nacked"] == s["returned"] == s["unconfirmed"] == 0, s
    # every publisher went round the three nodes, two of them forwarding to the owner
    for p in pubs.all:
        assert {name for _, name in p.connects} == {n.name for n in c.nodes}, p.connects
    d = drain(c.nodes[::-1], "plain", "q")
    assert_confirmed_present(pubs.confirmed, d, c, "no faults")
    assert not d.duplicates and not d.redelivered
    assert set(d.counts) == pubs.confirmed


@pytest.fixture
def ns_cluster(netns_lab, tmp_path):
    with netns_cluster(netns_lab, tmp_path) as c:
        yield c


def test_cut_off_node_refuses_definition_changes_and_heals(netns_lab, ns_cluster: Cluster):
    lab = netns_lab
    c = ns_cluster
    c.wait_until(lambda: all(n["running"] for n in c.status(c.nodes[0])["nodes"]),
                 timeout=30, what="all Raft links")
    owner = c.owner_of("/")
    cut = next(i for i, n in enumerate(c.nodes) if n is not owner)
    lonely = c.nodes[cut]
    # a vhost of its own, so an AMQP client of it is served while it is cut off
    create_vhost(c, "lonely", owner=lonely, replicas=1)
    lab.cut(cut)
    # its clients still reach it (from the bridge address), its peers do not
    assert c.http(lonely, "GET", "/api/overview")[0] == 200
    c.wait_until(lambda: not c.status(lonely)["has_quorum"], timeout=30,
                 what="the cut-off node to lose the quorum")
    t = time.monotonic()
    code, body = c.http(lonely, "PUT", "/api/queues/%2F/refused", {"durable": True})
    assert code >= 500 and "quorum" in str(body), (code, body)
    assert time.monotonic() - t < 15
    # an AMQP client of the cut-off node gets the same answer for a declare
    conn = pika.BlockingConnection(amqp_params(lonely, "lonely", c.user, c.password))
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        conn.channel().queue_declare("refused-too", durable=True)
    assert e.value.reply_code == 541
    # the other two still have a majority
    other = next(n for n in c.nodes if n is not lonely)
    assert c.http(other, "PUT", "/api/queues/%2F/on-the-majority", {"durable": True})[0] \
        in (201, 204)
    lab.heal(cut)
    c.wait_until(lambda: c.http(lonely, "PUT", "/api/queues/%2F/after-heal",
                                {"durable": True})[0] in (201, 204), timeout=60,
                 what="changes through the healed node")
    c.wait_until(lambda: c.http(lonely, "GET", "/api/queues/%2F/on-the-majority")[0] == 200,
                 timeout=30, what="the healed node catching up")
