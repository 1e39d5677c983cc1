"""MessageStore against real LMDB files (tmp_path); asyncio via asyncio.run, no plugin."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from storage import store as store_mod
from storage.keys import decode_key, encode_key
from storage.store import MessageStore, StoreError

REPO_ROOT = Path(__file__).resolve().parents[2]


def run(path: Path, body: Callable[[MessageStore], Awaitable[None]], **kw: object) -> None:
    """Open a store at ``path``, run ``body`` on a fresh loop, close the store."""

    async def main() -> None:
        store = MessageStore(path, **kw)  # type: ignore[arg-type]
        store.start(asyncio.get_running_loop())
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


def rec(i: int) -> bytes:
    return b"msg-%d" % i


def test_put_flush_reopen_keeps_order(tmp_path: Path) -> None:
    async def write(s: MessageStore) -> None:
        # Out of order on purpose: order comes from the key, not from arrival.
        for i in [5, 1, 300, 2, 256, 3]:
            s.put("q", i, rec(i))
        await s.flush()

    async def read(s: MessageStore) -> None:
        assert s.read_range("q", 0, 100) == [(i, rec(i), False) for i in [1, 2, 3, 5, 256, 300]]
        assert s.read_range("q", 3, 2) == [(3, rec(3), False), (5, rec(5), False)]
        assert s.read_range("q", 301, 10) == []
        assert s.read_range("q", 0, 0) == []

    run(tmp_path, write)
    run(tmp_path, read)


def test_queue_prefixes_do_not_mix(tmp_path: Path) -> None:
    async def body(s: MessageStore) -> None:
        for name in ["a", "ab", "b", ""]:
            for i in range(1, 4):
                s.put(name, i, name.encode() + rec(i))
        await s.flush()
        for name in ["a", "ab", "b", ""]:
            assert [r for _, r, _ in s.read_range(name, 0, 10)] == [
                name.encode() + rec(i) for i in range(1, 4)
            ]
            assert s.last_seq(name) == 3
        assert s.queues() == {"a", "ab", "b", ""}

    run(tmp_path, body)


def test_delete_and_delete_queue(tmp_path: Path) -> None:
    async def write(s: MessageStore) -> None:
        for q in ("keep", "drop"):
            for i in range(1, 11):
                s.put(q, i, rec(i))
        await s.flush()
        s.delete("keep", 1)
        s.delete("keep", 5)
        s.mark_delivered("drop", 3)
        await s.flush()
        s.delete_queue("drop")
        await s.flush()

    async def read(s: MessageStore) -> None:
        assert [seq for seq, _, _ in s.read_range("keep", 0, 100)] == [2, 3, 4, 6, 7, 8, 9, 10]
        assert s.read_range("drop", 0, 100) == []
        assert s.queues() == {"keep"}
        assert s.last_seq("drop") == 0
        # delete_queue must take the delivered marks too, or a recreated queue would see
        # stale redelivered flags.
        s.put("drop", 3, b"new")
        await s.flush()
        assert s.read_range("drop", 0, 10) == [(3, b"new", False)]

    run(tmp_path, write)
    run(tmp_path, read)


def test_delivered_marks_survive_reopen(tmp_path: Path) -> None:
    async def write(s: MessageStore) -> None:
        for i in range(1, 6):
            s.put("q", i, rec(i))
        await s.flush()
        s.mark_delivered("q", 2)
        s.mark_delivered("q", 4)
        s.delete("q", 4)  # acked: the mark goes with the message
        s.mark_delivered("q", 99)  # no such message: must not leave a stray mark
        await s.flush()

    async def read(s: MessageStore) -> None:
        assert [(seq, d) for seq, _, d in s.read_range("q", 0, 10)] == [
            (1, False),
            (2, True),
            (3, False),
            (5, False),
        ]
        s.put("q", 99, b"late")
        s.put("q", 4, b"again")
        await s.flush()
        assert [(seq, d) for seq, _, d in s.read_range("q", 0, 10)][-2:] == [
            (5, False),
            (99, False),
        ]
        assert (4, b"again", False) in s.read_range("q", 0, 10)

    run(tmp_path, write)
    run(tmp_path, read)


def test_count_and_last_seq(tmp_path: Path) -> None:
    async def body(s: MessageStore) -> None:
        assert s.count("q") == (0, 0)
        assert s.last_seq("q") == 0
        for i in range(1, 101):
            s.put("q", i, b"x" * i)
        await s.flush()
        assert s.count("q") == (100, sum(range(1, 101)))
        assert s.count("q", 51) == (50, sum(range(51, 101)))
        assert s.last_seq("q") == 100
        s.delete("q", 100)
        await s.flush()
        assert s.last_seq("q") == 99
        assert s.count("other") == (0, 0)

    run(tmp_path, body)


def test_reads_see_uncommitted_writes(tmp_path: Path) -> None:
    async def body(s: MessageStore) -> None:
        for i in range(1, 6):
            s.put("q", i, rec(i))
        await s.flush()
        # No await between the writes and the reads: nothing below can be committed yet
        # as far as the reads are concerned, whatever the writer thread is doing.
        s.delete("q", 2)
        s.delete("q", 5)
        s.put("q", 6, rec(6))
        s.put("q", 3, b"replaced")
        s.mark_delivered("q", 1)
        s.mark_delivered("q", 6)
        expected = [
            (1, rec(1), True),
            (3, b"replaced", False),
            (4, rec(4), False),
            (6, rec(6), True),
        ]
        assert s.read_range("q", 0, 10) == expected
        assert s.read_range("q", 2, 2) == expected[1:3]
        assert s.count("q") == (4, sum(len(r) for _, r, _ in expected))
        assert s.last_seq("q") == 6
        s.delete("q", 6)
        assert s.last_seq("q") == 4
        s.delete_queue("q")
        assert s.read_range("q", 0, 10) == []
        assert s.count("q") == (0, 0)
        assert s.last_seq("q") == 0
        s.put("q", 7, rec(7))
        assert s.read_range("q", 0, 10) == [(7, rec(7), False)]
        await s.flush()
        assert s.read_range("q", 0, 10) == [(7, rec(7), False)]

    run(tmp_path, body)


def test_reads_across_several_pending_generations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny generations so the overlay is a stack of several sealed batches, some of them
    # possibly committing while we read.
    monkeypatch.setattr(store_mod, "MAX_BATCH_OPS", 3)

    async def body(s: MessageStore) -> None:
        model: dict[int, bytes] = {}
        for i in range(1, 200):
            s.put("q", i, rec(i))
            model[i] = rec(i)
            if i % 3 == 0:
                s.delete("q", i - 1)
                del model[i - 1]
            if i % 50 == 0:
                assert [(k, v) for k, v, _ in s.read_range("q", 0, 1000)] == sorted(model.items())
                assert s.last_seq("q") == max(model)
        await s.flush()
        assert [(k, v) for k, v, _ in s.read_range("q", 0, 1000)] == sorted(model.items())
        assert s.count("q")[0] == len(model)

    run(tmp_path, body)


def test_group_commit(tmp_path: Path) -> None:
    async def body(s: MessageStore) -> None:
        for i in range(1, 10_001):
            s.put("q", i, b"y" * 100)
        await s.flush()
        assert s.stats["ops"] == 10_000
        assert s.stats["commits"] < 100
        assert s.count("q") == (10_000, 1_000_000)

    run(tmp_path, body)


def test_flush_futures_are_shared_and_ordered(tmp_path: Path) -> None:
    async def body(s: MessageStore) -> None:
        assert s.flush().done()  # nothing pending
        s.put("q", 1, b"a")
        f1 = s.flush()
        assert s.flush() is f1
        await f1
        s.put("q", 2, b"b")
        f2 = s.flush()
        assert f2 is not f1
        await f2
        assert s.count("q") == (2, 2)

    run(tmp_path, body)


def test_put_then_delete_cancels_out(tmp_path: Path) -> None:
    async def main() -> None:
        s = MessageStore(tmp_path)
        # the ops go in before the writer thread starts, so that it cannot seal the batch
        # between a put and its delete (which a busy machine showed)
        for i in range(1, 1001):
            s.put("q", i, b"z" * 1000)
            s.mark_delivered("q", i)
            s.delete("q", i)  # acked before the batch reached disk
        s.start(asyncio.get_running_loop())
        try:
            await s.flush()
            assert s.stats["cancelled_puts"] == 1000
            assert s.read_range("q", 0, 10) == []
            assert s.queues() == set()
            assert s.count("q") == (0, 0)
        finally:
            await s.close()

    asyncio.run(main())
    # Nothing but the two named DBs' roots was ever written.
    assert os.path.getsize(tmp_path / "data.mdb") < 64 * 1024


def test_delete_of_key_in_earlier_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "MAX_BATCH_OPS", 1)  # every op its own batch

    async def body(s: MessageStore) -> None:
        s.put("q", 1, b"a")
        s.put("q", 2, b"b")
        s.delete("q", 1)
        await s.flush()
        assert s.read_range("q", 0, 10) == [(2, b"b", False)]
        assert s.stats["cancelled_puts"] == 0

    run(tmp_path, body)
    run(tmp_path, lambda s: _expect(s, [(2, b"b", False)]))


async def _expect(s: MessageStore, items: list[tuple[int, bytes, bool]]) -> None:
    assert s.read_range("q", 0, 100) == items


def test_map_grows(tmp_path: Path) -> None:
    async def body(s: MessageStore) -> None:
        record = os.urandom(10 * 1024)
        for i in range(1, 2049):  # 20 MiB
            s.put("q", i, record)
            if i % 500 == 0:
                s.flush()
        await s.flush()
        assert s.stats["map_resizes"] >= 4
        assert s.count("q") == (2048, 2048 * len(record))

    run(tmp_path, body, map_size=1 << 20)


def test_queue_names(tmp_path: Path) -> None:
    async def body(s: MessageStore) -> None:
        with pytest.raises(ValueError, match="256 bytes"):
            s.put("x" * 256, 1, b"")
        with pytest.raises(ValueError):
            s.put("é" * 128, 1, b"")  # 128 characters, 256 bytes
        with pytest.raises(ValueError):
            s.put("q", -1, b"")
        with pytest.raises(ValueError):
            s.put("q", 1 << 64, b"")
        names = ["x" * 255, "é" * 127, "очередь", "队列/任务", "🐇 rabbit"]
        for n in names:
            s.put(n, 1, n.encode())
        await s.flush()
        assert s.queues() == set(names)
        for n in names:
            assert s.read_range(n, 0, 5) == [(1, n.encode(), False)]

    run(tmp_path, body)
    assert decode_key(encode_key("队列", 7)) == ("队列", 7)


def test_writes_after_close_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        s = MessageStore(tmp_path)
        s.start(asyncio.get_running_loop())
        s.put("q", 1, b"a")
        await s.close()  # drains without an explicit flush
        with pytest.raises(StoreError):
            s.put("q", 2, b"b")

    asyncio.run(main())
    run(tmp_path, lambda s: _expect(s, [(1, b"a", False)]))


def test_writer_failure_fails_waiting_futures(tmp_path: Path) -> None:
    async def body(s: MessageStore) -> None:
        def boom(txn: object, gen: object) -> None:
            raise OSError("disk on fire")

        s._apply = boom  # type: ignore[method-assign]
        s.put("q", 1, b"a")
        with pytest.raises(OSError, match="disk on fire"):
            await asyncio.wait_for(s.flush(), 5)
        with pytest.raises(StoreError):
            s.put("q", 2, b"b")
        with pytest.raises(OSError):
            await s.flush()

    run(tmp_path, body)


CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from storage.store import MessageStore

    async def main(path, n):
        s = MessageStore(path)
        s.start(asyncio.get_running_loop())
        for i in range(1, n + 1):
            s.put("durable", i, b"%d" % i * 50)
        await s.flush()
        print("flushed", flush=True)
        # Keep writing so the kill lands mid-transaction, not on an idle store.
        i = n
        while True:
            i += 1
            s.put("durable", i, b"more")
            await asyncio.sleep(0)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def test_flushed_records_survive_sigkill(tmp_path: Path) -> None:
    n = 5000
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), str(n)],
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "flushed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    async def check(s: MessageStore) -> None:
        got = s.read_range("durable", 1, n)
        assert [seq for seq, _, _ in got] == list(range(1, n + 1))
        assert all(r == b"%d" % seq * 50 for seq, r, _ in got)

    run(tmp_path, check)


def test_purge_range_removes_messages_and_marks_in_range_only(tmp_path: Path) -> None:
    async def write(s: MessageStore) -> None:
        for i in range(1, 11):
            s.put("q", i, rec(i))
            s.put("other", i, rec(i))
        s.mark_delivered("q", 3)
        s.mark_delivered("q", 5)
        await s.flush()
        s.put("q", 11, rec(11))  # pending: cancelled by the range
        s.mark_delivered("q", 6)  # pending: its message goes, so must the mark
        s.purge_range("q", 4, 12)
        s.put("q", 12, rec(12))  # after the range, in the same generation
        s.put("q", 5, b"again")  # a re-put in the range after it survives, unmarked
        expected = [(1, rec(1), False), (2, rec(2), False), (3, rec(3), True),
                    (5, b"again", False), (12, rec(12), False)]
        assert s.read_range("q", 0, 100) == expected  # pending ops laid over the disk
        assert await s.read_range_async("q", 0, 100) == expected
        assert s.count("q") == (5, sum(len(r) for _, r, _ in expected))
        assert s.last_seq("q") == 12
        await s.flush()
        assert s.read_range("q", 0, 100) == expected
        assert len(s.read_range("other", 0, 100)) == 10

    async def read(s: MessageStore) -> None:
        assert [(q, d) for q, _, d in s.read_range("q", 0, 100)] == [
            (1, False), (2, False), (3, True), (5, False), (12, False)]
        assert len(s.read_range("other", 0, 100)) == 10

    run(tmp_path, write)
    run(tmp_path, read)


def test_async_reads_run_on_the_reader_thread_and_see_pending_writes(tmp_path: Path) -> None:
    import threading

    async def body(s: MessageStore) -> None:
        for i in range(1, 6):
            s.put("q", i, b"P" if i % 2 else b"T")
        await s.flush()
        s.put("q", 6, b"P")  # pending
        s.delete("q", 1)  # pending
        s.mark_delivered("q", 3)
        threads: list[int] = []
        real = s._items

        def spy(*args: object, **kw: object) -> object:
            threads.append(threading.get_ident())
            return real(*args, **kw)  # type: ignore[arg-type]
        s._items = spy  # type: ignore[method-assign]
        fut = s.read_range_async("q", 2, 3)
        s.put("q", 7, b"P")  # after the call: the open generation was copied, not shared
        assert await fut == [(2, b"T", False), (3, b"P", True), (4, b"T", False)]
        bound = [6]
        first, n, size, last, dropped = await s.scan_async("q", bound, lambda r: r[:1] == b"P")
        assert (first, n, size, last, sorted(dropped)) == (3, 3, 3, 6, [2, 4])
        assert threads and threading.get_ident() not in threads

    run(tmp_path, body)


def test_async_reads_fail_once_the_store_is_closing(tmp_path: Path) -> None:
    async def body(s: MessageStore) -> None:
        s.put("q", 1, b"x")
        reading = s.read_range_async("q", 0, 10)
        await s.close()  # waits for the read under way
        assert await reading == [(1, b"x", False)]
        with pytest.raises(StoreError):
            await s.read_range_async("q", 0, 10)

    run(tmp_path, body)
