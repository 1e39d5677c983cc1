"""The Raft port before authentication, a durable journal, and a
follower that never deletes log entries matching the leader's."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from pathlib import Path

import pytest

from cluster import raft_port
from cluster.log_matching import trim_append_entries
from cluster.raft import MetadataStore
from tests.unit.test_raft import free_port, no_tick_threads_left, run  # noqa: F401

SECRET = "test-cluster-secret"


def _store(tmp_path: Path, port: int) -> MetadataStore:
    return MetadataStore(self_address=f"127.0.0.1:{port}", peers=[],
                         data_dir=str(tmp_path), secret=SECRET)


def _hung_up_within(sock: socket.socket, seconds: float, trickle: bytes = b"x") -> bool:
    """Keep sending a byte every 0.2 s (which resets pysyncobj's idle timeout); True once
    the node has closed the connection."""
    deadline = time.monotonic() + seconds
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            sock.sendall(trickle)
            if sock.recv(1) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


# --- item 5 ----------------------------------------------------------------------------
def test_a_stranger_cannot_make_the_raft_port_buffer_a_huge_message(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()

    async def main() -> None:
        store = _store(tmp_path, port)
        await store.start()
        try:
            def attack() -> bool:
                with socket.create_connection(("127.0.0.1", port)) as s:
                    s.sendall(struct.pack("i", 1 << 30))  # "a 1 GiB message follows"
                    try:
                        s.sendall(os.urandom(1 << 20))
                    except OSError:
                        return True
                    return _hung_up_within(s, 3.0)
            assert await asyncio.to_thread(attack), "the node kept buffering a stranger's bytes"
            result = await store.submit({"op": "add_vhost", "name": "still-works"})
            assert result["ok"]
        finally:
            await store.close()

    with caplog.at_level(logging.WARNING, logger="warren.raft_port"):
        run(main())
    assert any("raft port: refused 127.0.0.1:" in r.getMessage() and "before authenticating"
               in r.getMessage() for r in caplog.records), caplog.text


def test_a_stranger_that_trickles_bytes_is_cut_off(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raft_port, "PREAUTH_TIMEOUT", 1.0)
    port = free_port()

    async def main() -> None:
        store = _store(tmp_path, port)
        await store.start()
        try:
            def attack() -> bool:
                with socket.create_connection(("127.0.0.1", port)) as s:
                    s.sendall(struct.pack("i", 1000))
                    return _hung_up_within(s, 6.0)
            assert await asyncio.to_thread(attack), "a slow stranger kept its connection"
        finally:
            await store.close()

    with caplog.at_level(logging.WARNING, logger="warren.raft_port"):
        run(main())
    assert any("not authenticated within" in r.getMessage() for r in caplog.records), \
        caplog.text


# --- item 6 ----------------------------------------------------------------------------
def test_the_journal_is_fsynced_before_a_change_is_acknowledged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []  # inode of every fsync'ed descriptor, in order
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    journal = tmp_path / "raft" / "journal"

    async def main() -> None:
        store = _store(tmp_path, free_port())
        await store.start()
        try:
            for i in range(3):
                before = synced.count(os.stat(journal).st_ino)
                result = await store.submit({"op": "add_vhost", "name": f"v{i}"})
                assert result["ok"]
                # by the time the change is acknowledged, the journal was fsynced
                assert synced.count(os.stat(journal).st_ino) > before, \
                    "a change was acknowledged before its journal entry was fsynced"
        finally:
            await store.close()

    run(main())


# --- item 7 ----------------------------------------------------------------------------
def _log(*terms: int, first: int = 1) -> list[tuple[bytes, int, int]]:
    return [(b"c%d" % (first + i), first + i, t) for i, t in enumerate(terms)]


def _view(log: list[tuple[bytes, int, int]]):  # type: ignore[no-untyped-def]
    first = log[0][1]
    return (lambda i: log[i - first] if 0 <= i - first < len(log) else None), log[-1][1]


def test_a_stale_append_entries_keeps_applied_entries() -> None:
    """The follower has 1..5 (term 2), applied and committed up to 5; a late copy of an
    earlier append-entries (prev 3, entries [4]) from the same leader arrives.  pysyncobj
    would delete 4 and 5; the trimmed message starts after 5."""
    log = _log(1, 1, 2, 2, 2)
    entry_at, last = _view(log)
    stale = {"type": "append_entries", "term": 2, "prevLogIdx": 3, "prevLogTerm": 2,
             "entries": [log[3]], "commit_index": 5}
    out = trim_append_entries(stale, entry_at, last, commit_index=5)
    assert out["prevLogIdx"] == 5 and out["prevLogTerm"] == 2 and out["entries"] == []


def test_conflicting_entries_are_still_deleted() -> None:
    """Uncommitted entries of an older term that the new leader does not have go, as Raft
    says; committed ones never do."""
    log = _log(1, 1, 1, 1)  # committed up to 2; 3 and 4 from a deposed leader (term 1)
    entry_at, last = _view(log)
    msg = {"type": "append_entries", "term": 3, "prevLogIdx": 1, "prevLogTerm": 1,
           "entries": [(b"c2", 2, 1), (b"x3", 3, 3)], "commit_index": 2}
    out = trim_append_entries(msg, entry_at, last, commit_index=2)
    assert out["prevLogIdx"] == 2 and [e[1] for e in out["entries"]] == [3]
    # a message that matches nothing beyond prev is handed on unchanged
    msg2 = {"type": "append_entries", "term": 3, "prevLogIdx": 2, "prevLogTerm": 1,
            "entries": [(b"x3", 3, 3)], "commit_index": 2}
    assert trim_append_entries(msg2, entry_at, last, commit_index=2) is msg2
    # a mismatch at prev is pysyncobj's to answer (reset)
    msg3 = {"type": "append_entries", "term": 3, "prevLogIdx": 2, "prevLogTerm": 9,
            "entries": [], "commit_index": 2}
    assert trim_append_entries(msg3, entry_at, last, commit_index=2) is msg3
