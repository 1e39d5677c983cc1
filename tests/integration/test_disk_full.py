"""A full disk loses nothing and stops nothing but publishers: one node whose data directory
is a 64 MiB tmpfs, a disk free limit too low for the alarm to come first (the disk fills
before a check sees it), and then another process taking whatever space is left.  Every
confirmed message stays consumable, consumers never meet 541, the node restarts on the
full disk and serves its messages, and the alarm clears once consuming freed space."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pika
import pytest

from tests.nodeproc import NodeProcess, http_json

BODY = 16 << 10
QUEUE = "full.disk"


@pytest.fixture
def small_disk(tmp_path: Path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a 64 MiB tmpfs on {mnt} (this test needs root): "
                    f"{r.stderr.strip() or r.returncode}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path: Path) -> int:
    """Another process takes every byte left on the file system; returns how many."""
    written = 0
    chunk = b"\0" * (64 << 10)
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError:
                break
        for size in (4096, 512, 1):  # the tail, in smaller pieces
            while True:
                try:
                    written += f.write(b"\0" * size)
                except OSError:
                    break
    return written


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def node_status(n: NodeProcess) -> dict:
    status, nodes = http_json(n.http_url, "GET", "/api/nodes")
    assert status == 200, nodes
    return nodes[0]


def drain(n: NodeProcess, limit: int | None = None) -> list[int]:
    """basic.get with ack until the queue is empty (or ``limit`` messages): their numbers."""
    c = pika.BlockingConnection(pika.URLParameters(n.url))
    got = []
    try:
        ch = c.channel()
        while limit is None or len(got) < limit:
            method, _props, body = ch.basic_get(QUEUE)
            if method is None:
                break
            got.append(int(body[:8]))
            ch.basic_ack(method.delivery_tag)
    finally:
        c.close()
    return got


@pytest.mark.parametrize("limit", ["1000", "2000000"])
def test_full_disk_keeps_every_confirmed_message(small_disk: Path, limit: str):
    n = NodeProcess(small_disk, disk_free_limit=limit, alarm_check_interval="0.2").start()
    try:
        c = pika.BlockingConnection(pika.URLParameters(
            n.url + "?blocked_connection_timeout=3"))
        told_blocked: list[object] = []  # connection.blocked received
        c.add_on_connection_blocked_callback(lambda *_: told_blocked.append(True))
        ch = c.channel()
        ch.queue_declare(QUEUE, durable=True)
        ch.confirm_delivery()
        confirmed: list[int] = []
        nacked = 0
        blocked = False
        padding = b"x" * (BODY - 8)
        for i in range(20_000):  # 20k x 16 KiB cannot fit in 64 MiB
            try:
                ch.basic_publish("", QUEUE, b"%08d" % i + padding,
                                 pika.BasicProperties(delivery_mode=2))
            except pika.exceptions.NackError:
                nacked += 1
                if nacked >= 50:
                    break
                continue
            except pika.exceptions.ConnectionBlockedTimeout:
                blocked = True  # the disk alarm blocked us: the connection timed out
                break
            confirmed.append(i)
        # blocked (connection.blocked arrived; pika raises only once it lasted 3 s, and the
        # nacks of writes the full disk refused may come first on a busy machine)
        assert blocked or told_blocked, \
            f"publisher not blocked ({len(confirmed)} confirmed, {nacked} nacked)"
        assert len(confirmed) > 1000
        assert node_status(n)["disk_free_alarm"] is True

        # another process takes the rest of the disk
        fill(small_disk / "filler")
        assert free_bytes(small_disk) < 64 << 10

        # consumers keep working on the full disk: half of the messages, acked
        half = len(confirmed) // 2
        got = drain(n, limit=half)
        assert len(got) == half
        n.stop()
        assert n.proc is not None and n.proc.returncode in (0, -15), n.log_text()[-3000:]

        # restarted on a disk that is full again (what the reserve gave back is taken), the
        # node serves the rest
        fill(small_disk / "filler-2")
        assert free_bytes(small_disk) < 64 << 10
        n.start()
        got += drain(n)
        assert set(confirmed) <= set(got), (
            f"{len(set(confirmed) - set(got))} confirmed messages lost")
        assert len(got) == len(set(got))
        assert set(got) - set(confirmed) <= set(range(20_000))

        # consuming freed space inside the store: the alarm clears and publishing resumes
        deadline = time.monotonic() + 30
        while node_status(n)["disk_free_alarm"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert node_status(n)["disk_free_alarm"] is False
        c = pika.BlockingConnection(pika.URLParameters(n.url))
        ch = c.channel()
        ch.confirm_delivery()
        ch.basic_publish("", QUEUE, b"%08d" % 99_999 + b"after",
                         pika.BasicProperties(delivery_mode=2))
        c.close()
        assert drain(n) == [99_999]
        log = n.log_text()
        assert "INTERNAL_ERROR" not in log and "Traceback" not in log, log[-3000:]
    finally:
        n.stop()


def test_full_disk_refuses_new_definitions_and_keeps_serving(small_disk: Path):
    """The Raft journal is written through mmap: on a full disk a new page of it used to
    kill the node with SIGBUS.  Now a Raft write the disk refuses first gives back the
    node's reserve (Raft must go on: term, vote, entries), and once that is taken too the
    definition is refused and the node goes on."""
    n = NodeProcess(small_disk, disk_free_limit="1000", alarm_check_interval="0.2").start()
    try:
        c = pika.BlockingConnection(pika.URLParameters(n.url))
        ch = c.channel()
        ch.queue_declare(QUEUE, durable=True)
        ch.confirm_delivery()
        for i in range(10):
            ch.basic_publish("", QUEUE, b"%08d" % i, pika.BasicProperties(delivery_mode=2))
        c.close()
        fill(small_disk / "filler")
        assert free_bytes(small_disk) < 64 << 10

        c = pika.BlockingConnection(pika.URLParameters(n.url))
        ch = c.channel()
        reserve = small_disk / "node.reserve"
        assert reserve.stat().st_size > 0
        refilled = False
        with pytest.raises(pika.exceptions.AMQPError):
            for i in range(5000):  # each one a journal entry: new pages soon
                ch.queue_declare(f"new-{i}-" + "x" * 200, durable=True)
                if not refilled and reserve.stat().st_size == 0:
                    # Raft took the reserve; another process takes what it gave back
                    fill(small_disk / "filler2")
                    refilled = True
        assert refilled, "the node's reserve was never given back to Raft"
        assert n.running, n.log_text()[-3000:]
        assert sorted(drain(n)) == list(range(10))

        # space comes back: definitions are taken again
        os.remove(small_disk / "filler")
        os.remove(small_disk / "filler2")
        c = pika.BlockingConnection(pika.URLParameters(n.url))
        c.channel().queue_declare("after.full", durable=True)
        c.close()
        assert n.running
    finally:
        n.stop()
