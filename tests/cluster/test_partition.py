"""A network partition: the node that owns a vhost (leading Raft or not) is cut off
from the other two while its own clients can still reach it and keep publishing.  The
majority fails the vhost over; the cut-off owner can replicate nothing, so it must confirm
nothing sent after the cut; after the heal every node reports one owner and epoch, and every
confirmed message is there.  Nodes live in network namespaces (tests.cluster.netns)."""

from __future__ import annotations

import logging
import threading
import time

import pika
import pytest

from tests.cluster.conftest import Cluster, netns_cluster
from tests.cluster.harness import (
    CONNECTION_FORCED,
    Publisher,
    Publishers,
    amqp_params,
    assert_confirmed_present,
    create_vhost,
    drain,
    log_recovery,
    log_tails,
    vhost_state,
    wait_epoch_change,
    wait_in_sync,
    wait_vhost,
)

log = logging.getLogger("tests.faults")

SETTINGS = {"replication_factor": "3", "failover_timeout": "2"}


class Watcher(threading.Thread):
    """A consumer of the owner's own, never acking: when each delivery arrived."""

    def __init__(self, params: pika.ConnectionParameters, queue: str) -> None:
        super().__init__(name="watcher", daemon=True)
        self.params, self.queue = params, queue
        self.arrivals: list[float] = []
        self.closed: str | None = None
        self._stop_event = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            conn = pika.BlockingConnection(self.params)
            ch = conn.channel()
            ch.basic_consume(self.queue, lambda *a: self.arrivals.append(time.monotonic()))
            self.ready.set()
            while not self._stop_event.is_set():
                conn.process_data_events(time_limit=0.1)
            conn.close()
        except Exception as e:  # the old owner closes it (320) once it knows
            self.closed = repr(e)
            self.ready.set()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)


@pytest.fixture
def ns_cluster(netns_lab, tmp_path):
    with netns_cluster(netns_lab, tmp_path, **SETTINGS) as c:
        c.wait_until(lambda: all(n["running"] for n in c.status(c.nodes[0])["nodes"]),
                     timeout=30, what="all Raft links")
        yield c


@pytest.mark.timeout(240)
@pytest.mark.parametrize("owner_leads_raft", [True, False], ids=["owner-leads", "owner-follows"])
def test_owner_cut_off_confirms_nothing_it_cannot_replicate(netns_lab, ns_cluster: Cluster,
                                                            owner_leads_raft: bool):
    lab, c = netns_lab, ns_cluster
    leader = c.leader(c.nodes[0])
    assert leader is not None
    # cut off the Raft leader too (the majority must elect one before it can fail over), or
    # a follower (the leader, on the majority side, fails it over)
    owner = leader if owner_leads_raft else next(n for n in c.nodes if n is not leader)
    i = c.nodes.index(owner)
    majority = [n for n in c.nodes if n is not owner]
    create_vhost(c, "orders", owner, 3)
    before = wait_in_sync(c, "orders", 2)
    assert before["owner"] == owner.name, before
    cred = {"user": c.user, "password": c.password}
    pubs = Publishers(c.nodes, "orders", "q", confirm_timeout=3, **cred).start()
    # the owner's own clients: one that reconnects to it after 3 s without a confirm (so it
    # keeps publishing new messages through the partition) and one that stays connected
    stubborn = Publisher([owner], "orders", "q", name="stubborn", confirm_timeout=3, **cred)
    sticky = Publisher([owner], "orders", "q", name="sticky", confirm_timeout=600, **cred)
    own = [stubborn, sticky]
    # and a client of a majority node, forwarded to the owner: once the vhost has failed
    # over, that node must close it (as a dead owner's socket would) rather than leave it
    # hanging on the cut-off owner until a heartbeat timeout
    forwarded = Publisher([majority[0]], "orders", "q", name="forwarded", confirm_timeout=600,
                          **cred)
    for p in own + [forwarded]:
        p.start()
    # a consumer of the owner's own: once a new owner's epoch is committed it must get
    # nothing more from the old one (the owner lease stops it first)
    watcher = Watcher(amqp_params(owner, "orders", **cred), "q")
    watcher.start()
    assert watcher.ready.wait(30) and watcher.closed is None, watcher.closed
    pubs.wait_confirms(300, what="before the cut")
    lab.cut(i)
    t_cut = time.monotonic()  # once the rules are in: nothing sent from now on can get out
    after = wait_epoch_change(c, "orders", before, via=majority, timeout=60, since=t_cut)
    t_epoch = time.monotonic()  # the new epoch was committed before this
    assert after["owner"] in before["in_sync"], (before, after)
    pubs.wait_confirms(300, timeout=60, what="through the majority after the failover")
    log_recovery("owner partitioned", pubs, t_cut)
    # (checked at the end, so that the rest of the scenario still runs and reports)
    problems = []
    try:
        c.wait_until(lambda: forwarded.snapshot("closes") or forwarded.confirms_since(t_cut),
                     timeout=30)
    except TimeoutError:
        pass
    closes = [(round(cl.at - t_cut, 3), cl.code, cl.text) for cl in forwarded.closes]
    log.warning("client forwarded by %s: closes %s", majority[0].name, closes)
    if not closes or closes[0][1] != CONNECTION_FORCED:
        problems.append(f"{majority[0].name} did not close its client forwarded to the cut-off "
                        f"owner with 320 within 30 s of the failover (closes: {closes}; "
                        f"confirms since the cut: {len(forwarded.confirms_since(t_cut))})")
    time.sleep(3)  # the cut-off owner's clients go on publishing to it a while
    # nothing sent to the cut-off owner after the cut can have reached a replica
    late = [cf for p in own for cf in p.confirms_since(t_cut) if cf.sent >= t_cut]
    assert not late, (f"the cut-off owner confirmed {len(late)} messages sent after the cut: "
                      f"{[cf.id for cf in late[:20]]}\n" + log_tails(c))
    log.warning("cut-off owner: %d stubborn reconnects, view from inside: %s",
                len(stubborn.connects), vhost_state(c, "orders", via=[owner]))
    arrivals = list(watcher.arrivals)
    after_cut = [round(t - t_cut, 3) for t in arrivals if t >= t_cut]
    log.warning("the old owner's consumer: %d deliveries, %d after the cut (last %s s after "
                "it); the new epoch was seen %.3f s after the cut", len(arrivals),
                len(after_cut), after_cut[-1] if after_cut else None, t_epoch - t_cut)
    split = [t for t in arrivals if t >= t_epoch]
    assert not split, (f"the cut-off owner delivered {len(split)} messages after the new "
                       f"owner's epoch was committed\n" + log_tails(c))
    lab.heal(i)
    # every node, the old owner included, reports the same owner and epoch
    for n in c.nodes:
        wait_vhost(c, "orders", lambda s: (s["owner"], s["epoch"])
                   == (after["owner"], after["epoch"]), via=[n], timeout=60,
                   what=f"{n.name} agreeing on the owner after the heal")
    st = wait_vhost(c, "orders", lambda s: owner.name in s["replicas"], via=majority,
                    timeout=60, what="the old owner a replica again")
    log.info("after the heal: %s", st)
    c.wait_until(lambda: any(cl.code == CONNECTION_FORCED for cl in sticky.snapshot("closes")),
                 timeout=30, what="the old owner closing its clients with 320")
    pubs.wait_confirms(100, what="after the heal")
    pubs.stop()
    for p in own + [forwarded]:
        p.stop()
    watcher.stop()
    confirmed = pubs.confirmed.union(*(p.confirmed for p in own + [forwarded]))
    d = drain(majority + [owner], "orders", "q", **cred)
    assert_confirmed_present(confirmed, d, c, "owner partitioned")
    assert not problems, problems
