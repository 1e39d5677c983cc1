"""A replicated vhost whose owner's disk fills up: the owner nacks what it cannot store,
its consumers drain every confirmed message, the replicas stay in step (the acks reach
them), and after the owner is killed the new owner holds nothing that was consumed."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.harness import (
    Publisher,
    assert_confirmed_present,
    drain,
    wait_epoch_change,
)
from tests.cluster.test_replication import SETTINGS, creds, others, placed
from tests.integration.test_disk_full import fill, free_bytes
from tests.nodeproc import http_json


@pytest.fixture
def full_owner_cluster(tmp_path: Path):
    c = Cluster(tmp_path, disk_free_limit="1000", alarm_check_interval="0.2", **SETTINGS)
    disk = c.nodes[0].data_dir
    disk.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a 64 MiB tmpfs on {disk} (this test needs root): "
                    f"{r.stderr.strip() or r.returncode}")
    try:
        c.start()
        c.wait_until(lambda: all(n["running"] for n in c.status(c.nodes[0])["nodes"]),
                     timeout=30, what="all Raft links")
        yield c
    finally:
        c.stop()
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def disk_alarm(c: Cluster, node) -> bool:
    status, nodes = http_json(node.http_url, "GET", "/api/nodes", user=c.user,
                              password=c.password)
    assert status == 200, nodes
    return next(n for n in nodes if n["name"] == node.name)["disk_free_alarm"]


def test_owner_disk_full_loses_nothing_and_resurrects_nothing(full_owner_cluster: Cluster):
    c = full_owner_cluster
    owner = c.nodes[0]
    before = placed(c, "orders", owner, 3)
    pub = Publisher([owner], "orders", "q", body_size=16 << 10, rate=0, window=20,
                    confirm_timeout=3, **creds(c))
    pub.start()
    deadline = time.monotonic() + 120
    while not disk_alarm(c, owner) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert disk_alarm(c, owner), "the owner's disk alarm never went off"
    pub.stop(settle=3)
    assert len(pub.confirmed) > 1000, len(pub.confirmed)
    fill(owner.data_dir / "filler")
    assert free_bytes(owner.data_dir) < 64 << 10

    # the owner's consumers drain every confirmed message from its full disk
    d = drain([owner], "orders", "q", **creds(c))
    assert_confirmed_present(pub.confirmed, d, c, "owner's disk full")
    assert not d.errors, d.errors[:5]
    assert owner.running

    # the acks reached the replicas: the next owner serves none of the consumed messages
    time.sleep(1.0)  # the last acks' records reach the replicas
    t = time.monotonic()
    owner.kill()
    wait_epoch_change(c, "orders", before, via=others(c, owner), since=t)
    after = drain(others(c, owner), "orders", "q", **creds(c))
    again = set(after.counts) & set(d.counts)
    assert not again, f"{len(again)} consumed messages came back after the failover"
    assert set(after.counts) <= pub.nacked | pub.unconfirmed, (
        "the new owner holds messages nobody published")
