"""The event loop never waits on LMDB.  A queue with a real store pages
in, purges and recovers a backlog without opening a single LMDB read transaction on the
loop's thread (the loop serves every vhost of the node), and keeps its semantics: order,
counts, redelivered flags, transient messages dropped at recovery, unacknowledged messages
surviving a purge."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from node.amqp import spec
from node.amqp.frames import content_header_payload
from node.amqp.message import Message
from node.queues.consumer import Consumer
from node.queues.entry import QueueEntry
from node.queues.queue import Queue
from storage.store import MessageStore

LIMIT = 2000  # the queue's in-memory bound (the smallest it takes)
HANG = 30.0  # a guard against hanging, not a measure of speed


class LoopReads:
    """Wraps a store's LMDB environment: counts read transactions begun on the loop's
    thread."""

    def __init__(self, store: MessageStore) -> None:
        self._env = store._env
        self.loop_thread = threading.get_ident()
        self.on_loop = 0
        self.elsewhere = 0
        store._env = self  # type: ignore[assignment]

    def begin(self, *args: Any, **kw: Any) -> Any:
        if not kw.get("write"):
            if threading.get_ident() == self.loop_thread:
                self.on_loop += 1
            else:
                self.elsewhere += 1
        return self._env.begin(*args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


class Collector:
    """A consumer's channel: takes everything."""

    def __init__(self) -> None:
        self.got: list[QueueEntry] = []

    def can_deliver(self, consumer: Consumer) -> bool:
        return True

    def deliver(self, consumer: Consumer, queue: Queue, entry: QueueEntry) -> None:
        self.got.append(entry)

    def cancel_consumers_of(self, queue: Queue) -> None: ...


def message(i: int, persistent: bool = True) -> Message:
    return Message("", "q", b"\x00" * 14, b"body-%d" % i, persistent)


async def open_store(path: Path) -> MessageStore:
    store = MessageStore(path, sync=False)
    store.start(asyncio.get_running_loop())
    return store


def new_queue(store: MessageStore) -> Queue:
    return Queue("/", "q", durable=True, store=store, memory_limit=LIMIT)


async def until(cond: Any) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.005)
    await asyncio.wait_for(poll(), HANG)


async def drain(q: Queue) -> list[QueueEntry]:
    """Consume everything with a consumer (acking as it goes), as a channel would."""
    owner = Collector()
    c = Consumer("c", q, owner, no_ack=False, exclusive=False, prefetch=0)
    q.add_consumer(c)
    await until(lambda: not q.message_count)
    for e in owner.got:
        q.ack(e, c)
    q.remove_consumer(c)
    return owner.got


def test_page_in_purge_and_recovery_never_read_lmdb_on_the_loop(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path)
        q = new_queue(store)
        for i in range(1, 10_001):
            q.publish(message(i))
        await store.flush()
        assert q.message_count == 10_000
        reads = LoopReads(store)

        # page-in: a consumer drains 8000 paged messages, in order
        got = await drain(q)
        assert [e.seq for e in got] == list(range(1, 10_001))
        assert reads.on_loop == 0 and reads.elsewhere > 0

        # purge of a partly paged queue; 3 unacknowledged messages stay
        for i in range(10_001, 20_001):
            q.publish(message(i))
        taken = [q.get() for _ in range(3)]
        for e in taken:
            assert e is not None
            q.taken(e)
        assert q.purge() == 10_000 - 3
        assert q.message_count == 0
        assert reads.on_loop == 0
        for i in range(20_001, 20_006):  # the queue goes on after a purge
            q.publish(message(i))
        await store.flush()
        await store.close()

        # recovery: the three unacknowledged ones come back redelivered, then the five
        store = await open_store(tmp_path)
        reads = LoopReads(store)
        q = new_queue(store)
        q.recover()
        assert q.recovering
        wait = q.wait_for()
        assert wait is not None
        await asyncio.wait_for(wait, HANG)
        assert not q.recovering and q.message_count == 8
        got = await drain(q)
        assert [(e.seq, e.redelivered) for e in got] == [
            (10_001, True), (10_002, True), (10_003, True)] + [
            (i, False) for i in range(20_001, 20_006)]
        assert reads.on_loop == 0
        await store.flush()
        assert store.read_range("q", 0, 100) == []  # nothing left behind on disk
        await store.close()

    asyncio.run(main())


def test_recovery_drops_paged_transients_and_takes_publishes_meanwhile(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path)
        q = new_queue(store)
        for i in range(1, 6001):  # past LIMIT every other one is transient (paged anyway)
            q.publish(message(i, persistent=i <= LIMIT or i % 2 == 0))
        await store.flush()
        await store.close()

        store = await open_store(tmp_path)
        q = new_queue(store)
        q.recover()
        q.publish(message(6001))  # while the scan runs: numbered after what is stored
        wait = q.wait_for()
        if wait is not None:
            await asyncio.wait_for(wait, HANG)
        assert q.message_count == LIMIT + 2000 + 1
        # basic.get's way: wait for the batch when the ready list is empty
        seqs = []
        while True:
            wait = q.wait_for()
            if wait is not None:
                await asyncio.wait_for(wait, HANG)
            e = q.get()
            if e is None:
                break
            q.discard(e)
            seqs.append(e.seq)
        assert seqs == list(range(1, LIMIT + 1)) + list(range(LIMIT + 2, 6001, 2)) + [6001]
        await store.flush()
        assert store.read_range("q", 0, 10) == []
        await store.close()

    asyncio.run(main())


def test_a_recovered_priority_queue_is_all_in_memory_before_it_answers(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path)
        args = {"x-max-priority": 9}
        q = Queue("/", "p", durable=True, store=store, memory_limit=LIMIT, arguments=args)
        for i in range(1, 5001):
            props = spec.BasicProperties(priority=9 if i > 4990 else 0).encode()
            body = b"m%d" % i
            q.publish(Message("", "p", content_header_payload(60, len(body), props), body,
                              True))
        await store.flush()
        await store.close()

        store = await open_store(tmp_path)
        reads = LoopReads(store)
        q = Queue("/", "p", durable=True, store=store, memory_limit=LIMIT, arguments=args)
        q.recover()
        wait = q.wait_for()
        assert wait is not None
        await asyncio.wait_for(wait, HANG)
        assert q.message_count == 5000 and reads.on_loop == 0
        first = q.get()
        assert first is not None and first.seq == 4991  # the highest priority, recovered last
        await store.close()

    asyncio.run(main())
