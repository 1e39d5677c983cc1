"""A stopped replica costs its owner bounded memory: the replica leaves the in-sync set
after the failover timeout, its session ends once it has been silent that long, and the
owner keeps at most its change log (64 MiB a store, capped per node) for it meanwhile.

The figure behind it: with one replica SIGSTOPped while publishers send persistent 8 KB
messages, the owner's RSS grows by less than 64 MiB and has levelled off in the second
half.  The RSS is read from /proc, so this is a memory bound, not a timing."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tests.cluster.conftest import Cluster
from tests.cluster.harness import Publishers, create_vhost, wait_in_sync, wait_vhost

log = logging.getLogger("tests.faults")

SETTINGS = {"replication_factor": "3", "failover_timeout": "2",
            "queue_memory_messages": "1000"}
BODY = 8192
PUBLISHERS = 4
RATE = 190.0  # per publisher: 4 x 190 x 8 KB, about 6 MB/s
WARM_UP = 15.0  # the change log fills (64 MiB at 6 MB/s: about 11 s) before the fault
STOPPED = 30.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_a_stopped_replica_does_not_grow_the_owners_memory(tmp_path: Path) -> None:
    c = Cluster(tmp_path, **SETTINGS)
    try:
        c.start()
        c.wait_until(lambda: all(n["running"] for n in c.status(c.nodes[0])["nodes"]),
                     timeout=30, what="all Raft links")
        owner, stopped = c.nodes[0], c.nodes[1]
        create_vhost(c, "mem", owner, 3)
        wait_in_sync(c, "mem", 2)
        pubs = Publishers([owner], "mem", "q", count=PUBLISHERS, user=c.user,
                          password=c.password, rate=RATE, body_size=BODY, window=50).start()
        time.sleep(WARM_UP)
        assert owner.proc is not None and stopped.proc is not None
        before = rss_mib(owner.proc.pid)
        sent_before = len(pubs.confirmed)
        stopped.pause()
        samples: list[tuple[float, float]] = []
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < STOPPED:
            samples.append((elapsed, rss_mib(owner.proc.pid)))
            time.sleep(1.0)
        st = wait_vhost(c, "mem", lambda s: stopped.name not in s["in_sync"], via=[owner],
                        what="the stopped replica out of the in-sync set")
        stopped.resume()
        confirmed_meanwhile = len(pubs.confirmed) - sent_before
        pubs.stop()
        growth = max(r for _, r in samples) - before
        half = [r for t, r in samples if t >= STOPPED / 2]
        second_half = max(half) - min(half)
        log.warning("owner RSS %.0f MiB before the stop; +%.0f MiB at most in %.0f s, "
                    "%.1f MiB over the second half; %d confirmed meanwhile; samples %s",
                    before, growth, STOPPED, second_half, confirmed_meanwhile,
                    [(round(t), round(r)) for t, r in samples])
        # the publishers kept going with the replica out of the way
        assert confirmed_meanwhile > 1000, st
        assert growth < 64, f"owner RSS grew {growth:.0f} MiB with a replica stopped"
        assert second_half < 16, f"owner RSS still rising: {second_half:.0f} MiB late"
        # the replica comes back, catches up and every copy agrees
        wait_in_sync(c, "mem", 2, timeout=120)
        code, report = c.http(owner, "POST", "/api/cluster/vhosts/mem/verify", {},
                              timeout=300)
        assert code == 200 and report["agree"], report
    finally:
        c.stop()
