"""A publish sent again over a queue link is enqueued once: the queue that took it
remembers its id, and a queue object new on this node (its shard just taken over) reads
the ids from the tail of its store first (node/shards/publish_ids.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from node.amqp.message import Message
from node.queues.queue import Queue
from node.shards.publish_ids import RECENT, publish_once
from storage.store import MessageStore


def _linked(i: int, persistent: bool = True) -> Message:
    """What a link's owner decodes: the record carries the publish id."""
    m = Message("", "q", b"\x00" * 14, b"body-%d" % i, persistent)
    return Message.decode(m.record_with_pid(b"n" * 8 + i.to_bytes(8, "big")))


async def _store(path: Path) -> MessageStore:
    store = MessageStore(path, sync=False)
    store.start(asyncio.get_running_loop())
    return store


def _queue(store: MessageStore | None) -> Queue:
    return Queue("/", "q", durable=store is not None, store=store, memory_limit=RECENT)


def _bodies(q: Queue) -> list[bytes]:
    out = []
    while (e := q.get()) is not None:
        out.append(e.message.body)
        q.taken(e)
    return out


def test_the_id_travels_in_the_record() -> None:
    m = _linked(7)
    assert m.pid == b"n" * 8 + (7).to_bytes(8, "big")
    assert Message.record_pid(m.encode()) == m.pid
    assert Message.decode(m.encode()).body == b"body-7"
    plain = Message("", "q", b"\x00" * 14, b"x", True)
    assert plain.pid is None and Message.record_pid(plain.encode()) is None


def test_the_same_queue_takes_a_publish_sent_again_once(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _store(tmp_path)
        q = _queue(store)
        for i in range(3):  # their writes are not even committed yet: still found
            assert publish_once([q], _linked(i), again=False)[0]
        assert q.publish_ids is None  # no queue keeps ids until a publish comes again
        # 1 and 2 come again (their answers were lost), then 3 for the first time, and 3
        # again (what the queue took while it keeps ids is known without a store read)
        for i in (1, 2, 3, 3):
            ok, settled = publish_once([q], _linked(i), again=True)
            assert ok and settled is not None
            await settled
        assert q.publish_ids is not None and len(q.publish_ids) == 4
        assert _bodies(q) == [b"body-0", b"body-1", b"body-2", b"body-3"]
        await store.close()
    asyncio.run(main())


def test_a_new_owner_reads_the_ids_its_store_holds(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _store(tmp_path)
        old = _queue(store)
        for i in range(5):
            publish_once([old], _linked(i), again=False)
        await store.flush()
        # the shard is taken over: a new queue object on the same store knows no ids yet
        new = _queue(store)
        new.recover()
        while new.recovering:
            await asyncio.sleep(0.005)
        ok, settled = publish_once([new], _linked(4), again=True)  # replicated before
        assert ok and settled is not None
        await settled  # its confirm waits for the store, as a new publish's would
        ok, settled = publish_once([new], _linked(5), again=True)  # never got there
        assert ok and settled is not None
        await settled
        assert new.message_count == 6
        while new._paged_count:
            new._want_page_in()
            await asyncio.sleep(0.01)
        assert _bodies(new) == [b"body-%d" % i for i in range(6)]
        await store.close()
    asyncio.run(main())
