"""MessageStore on a disk that fills up: a real LMDB file on a small tmpfs (mounted here; we
run as root in CI).  A commit the disk refuses fails the flush of its new messages only;
deletes still commit (the reserve is given back to the disk for them), and the pages
they free are counted as space the store has."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage.reserve import Reserve
from storage.store import MessageStore, StoreError

RECORD = b"r" * (16 << 10)


@pytest.fixture
def tiny_disk(tmp_path: Path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount an 8 MiB tmpfs on {mnt} (this test needs root): "
                    f"{r.stderr.strip() or r.returncode}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path: Path) -> None:
    with open(path, "wb", buffering=0) as f:
        for size in (64 << 10, 4096, 1):
            while True:
                try:
                    f.write(b"\0" * size)
                except OSError:
                    break


def test_full_disk_nacks_new_messages_and_keeps_deleting(tiny_disk: Path) -> None:
    async def main() -> None:
        reserve = Reserve(str(tiny_disk / "store.reserve"), 1 << 20)
        store = MessageStore(tiny_disk / "store", reserve=reserve)
        store.start(asyncio.get_running_loop())
        try:
            assert store.space.reserve.held == 1 << 20
            confirmed: list[int] = []
            refused = 0
            for seq in range(1, 2000):  # 2000 x 16 KiB cannot fit in 8 MiB
                store.put("q", seq, RECORD)
                try:
                    await store.flush()
                except StoreError:
                    refused += 1
                    if refused == 3:
                        break
                    continue
                confirmed.append(seq)
            assert refused == 3 and len(confirmed) > 100
            assert store.space.short
            assert store.problem() is None
            # every confirmed message is there; what was refused is not
            stored = [seq for seq, _, _ in store.read_range("q", 0, 10_000)]
            assert stored == confirmed

            fill(tiny_disk / "filler")  # another process takes what is left
            store.delete_many("q", confirmed)
            await store.sync_point()
            assert store.count("q") == (0, 0)
            assert store.problem() is None
            # the deletes needed pages the disk no longer had: the reserve gave them
            assert store.space.reserve.held == 0
            # LMDB's file did not shrink, but nearly all of it is free pages now
            assert store.space.unused_in_file() > len(confirmed) * len(RECORD) * 9 // 10
            # the reserve is owed, so the space counted for new messages is net of it
            assert store.space.refresh(1000) == store.space.unused_in_file()
            assert not store.space.short  # room for the limit and a whole reserve
            # and new messages fit in the freed pages again
            store.put("q", 5000, RECORD)
            await store.flush()
            assert [s for s, _, _ in store.read_range("q", 0, 10)] == [5000]
        finally:
            await store.close()
        # reopened: what was committed is all there
        again = MessageStore(tiny_disk / "store", reserve=Reserve(reserve.path, 1 << 20))
        assert [s for s, _, _ in again.read_range("q", 0, 10)] == [5000]
        again._env.close()
        assert os.path.getsize(reserve.path) == 0  # the disk is still full

    asyncio.run(main())


def test_a_store_opened_on_a_full_disk_is_refused_not_fatal(tiny_disk: Path) -> None:
    """A replica's store opened after the disk filled: LMDB's lock file, grown sparse and
    then touched through its mapping, killed the process with SIGBUS.  In a child process,
    so that the old behaviour fails this test instead of ending the test run."""
    fill(tiny_disk / "filler")
    code = ("import errno, sys\n"
            "from storage.store import MessageStore\n"
            "try:\n"
            f"    MessageStore({str(tiny_disk / 'store')!r})\n"
            "except OSError as e:\n"
            "    sys.exit(3 if e.errno == errno.ENOSPC else 4)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 3, (r.returncode, r.stderr[-2000:])
