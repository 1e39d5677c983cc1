"""The per-vhost message store: opaque records per queue in an LMDB environment.

Threading model (everything below depends on it):

* Every public method is called from one asyncio event-loop thread.
* One dedicated writer thread owns every LMDB write transaction.  Writes are queued as
  *generations*: the open generation collects ops from the loop; the writer seals it, applies
  it in ONE write transaction, commits (one fsync pair with ``sync=True``) and then resolves
  the flush() futures attached to it.  Batching needs no timer: while one commit fsyncs the
  loop fills the next generation (group commit).
* Until a generation is committed it stays in ``_gens`` so that reads on the loop thread
  can lay it over the committed data (read-your-writes for unconfirmed publishes).

A generation is not an op log but the net effect of its ops per queue (cleared flag, puts,
deletes, delivered marks).  That makes a put followed by a delete in the same generation
cost nothing on disk, and makes a sealed generation immutable, so the writer can retry it
after growing the map.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import lmdb

from storage.keys import SEQ_BYTES, check_seq, last_key, queue_prefix, seq_of
from storage.residency import release_mapped_pages

# give back the map's touched pages (see storage/residency.py) after this many writes,
# at most this often
TRIM_EVERY_OPS = 20_000
TRIM_MIN_INTERVAL = 2.0

log = logging.getLogger(__name__)

# A generation is sealed once it reaches either bound, so a write transaction (and the
# memory the overlay pins) stays bounded even when the disk is slower than the publishers.
MAX_BATCH_OPS = 20_000
MAX_BATCH_BYTES = 16 << 20

_DB_MSGS = b"msgs"
_DB_DELIVERED = b"delivered"


class StoreError(Exception):
    """The store is closed or its writer thread failed; no further writes are accepted."""


class _QueueOps:
    """Net effect of one generation's ops on one queue.

    Applied in this order: ``cleared`` (delete_queue), ``deletes``, ``puts``, ``delivered``.
    """

    __slots__ = ("cleared", "puts", "deletes", "delivered")

    def __init__(self) -> None:
        self.cleared = False
        self.puts: dict[int, bytes] = {}
        # A delete stays here even when it cancelled a put of this generation: the key may
        # also exist on disk (a re-put seq), and a delete that misses dirties no page, so a
        # batch of such misses commits without any fsync.
        self.deletes: set[int] = set()
        self.delivered: set[int] = set()


class _Generation:
    __slots__ = ("queues", "nops", "nbytes", "sealed", "future")

    def __init__(self) -> None:
        self.queues: dict[str, _QueueOps] = {}
        self.nops = 0
        self.nbytes = 0
        self.sealed = False
        self.future: asyncio.Future[None] | None = None

    def ops_for(self, queue: str) -> _QueueOps:
        q = self.queues.get(queue)
        if q is None:
            q = self.queues[queue] = _QueueOps()
        return q


class _View:
    """Uncommitted state of one queue, folded over every pending generation."""

    __slots__ = ("base_visible", "extra", "hidden", "marks_add", "marks_del")

    def __init__(self, layers: list[_QueueOps]) -> None:
        if len(layers) == 1:
            # Common case: share the generation's containers instead of copying them.
            q = layers[0]
            self.base_visible = not q.cleared
            self.extra = q.puts
            self.hidden: set[int] = q.deletes
            self.marks_add = q.delivered
            self.marks_del = q.deletes
            return
        self.base_visible = True
        self.extra = {}
        self.hidden = set()
        self.marks_add = set()
        self.marks_del = set()
        for q in layers:
            if q.cleared:
                self.base_visible = False
                self.extra.clear()
                self.hidden.clear()
                self.marks_add.clear()
                self.marks_del.clear()
            for s in q.deletes:
                self.extra.pop(s, None)
                self.hidden.add(s)
                self.marks_add.discard(s)
                self.marks_del.add(s)
            self.extra.update(q.puts)
            self.marks_add.update(q.delivered)

    def skips_base(self, seq: int) -> bool:
        return seq in self.hidden or seq in self.extra


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _reject(fut: asyncio.Future[None], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class MessageStore:
    """Ordered, durable message records per queue, with group-committed writes."""

    def __init__(
        self, path: str | os.PathLike[str], *, sync: bool = True, map_size: int = 1 << 36
    ) -> None:
        self.path = os.fspath(path)
        self._env = lmdb.open(
            self.path,
            map_size=map_size,
            subdir=True,
            max_dbs=4,
            sync=sync,
            # The node may fork (pysyncobj compaction); cached reader slots must not leak
            # into the child.
            max_spare_txns=0,
            # Messages are read roughly in order but pages are small; readahead only
            # pollutes the page cache once the store exceeds RAM.
            readahead=False,
            writemap=False,
        )
        self._msgs = self._env.open_db(_DB_MSGS)
        self._delivered = self._env.open_db(_DB_DELIVERED)

        # Guards _gens, every open generation's contents, _closing, _failed, _writer_idle.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._gens: deque[_Generation] = deque([_Generation()])
        self._writer_idle = False
        self._closing = False
        self._failed: BaseException | None = None
        self._written_since_trim = 0
        self._last_trim = 0.0
        # set_mapsize() must not run while any transaction of this process is open; reads on
        # the loop thread hold this lock for the life of their read transaction.
        self._map_lock = threading.Lock()

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._closed = False
        self.stats: dict[str, Any] = {
            "commits": 0,
            "ops": 0,
            "last_batch_size": 0,
            "fsync_seconds_total": 0.0,
            "cancelled_puts": 0,
            "map_resizes": 0,
        }

    # ------------------------------------------------------------------ lifecycle

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the writer thread; flush futures are resolved on ``loop``."""
        if self._thread is not None:
            raise RuntimeError(f"message store at {self.path} is already started")
        self._loop = loop
        self._stopped = loop.create_future()
        # Daemon: if the node exits without close(), LMDB's copy-on-write commit leaves the
        # file consistent at the last committed transaction, so nothing is gained by waiting.
        self._thread = threading.Thread(
            target=self._writer_main, name=f"store-writer:{self.path}", daemon=True
        )
        self._thread.start()

    async def close(self) -> None:
        """Commit everything queued, stop the writer thread and close the environment."""
        if self._closed:
            return
        if self._thread is None:
            self.start(asyncio.get_running_loop())
        assert self._stopped is not None
        with self._lock:
            self._closing = True
            self._wake.notify()
        await self._stopped
        self._closed = True
        self._env.close()

    # ------------------------------------------------------------------ writes

    def put(self, queue: str, seq: int, record: bytes) -> None:
        """Store ``record`` as message ``seq`` of ``queue`` (overwrites an existing one)."""
        queue_prefix(queue)  # validates the name here, not later on the writer thread
        check_seq(seq)
        with self._lock:
            gen = self._open_gen()
            gen.ops_for(queue).puts[seq] = record
            gen.nbytes += len(record)
            self._enqueued(gen)

    def delete(self, queue: str, seq: int) -> None:
        """Remove message ``seq`` of ``queue`` and its delivered mark."""
        queue_prefix(queue)
        check_seq(seq)
        with self._lock:
            gen = self._open_gen()
            q = gen.ops_for(queue)
            if q.puts.pop(seq, None) is not None:
                self.stats["cancelled_puts"] += 1
            q.deletes.add(seq)
            q.delivered.discard(seq)
            self._enqueued(gen)

    def mark_delivered(self, queue: str, seq: int) -> None:
        """Record that ``seq`` was handed to a consumer, so recovery sets ``redelivered``."""
        queue_prefix(queue)
        check_seq(seq)
        with self._lock:
            gen = self._open_gen()
            gen.ops_for(queue).delivered.add(seq)
            self._enqueued(gen)

    def delete_queue(self, queue: str) -> None:
        """Remove every message and delivered mark of ``queue``."""
        queue_prefix(queue)
        with self._lock:
            gen = self._open_gen()
            q = gen.ops_for(queue)
            self.stats["cancelled_puts"] += len(q.puts)
            q.cleared = True
            q.puts = {}
            q.deletes = set()
            q.delivered = set()
            self._enqueued(gen)

    def flush(self) -> asyncio.Future[None]:
        """A future that resolves once every op enqueued before this call is durable.

        Calls between two commits share one future, so calling this per message is cheap.
        Because the future is shared, do not cancel it; wrap it in asyncio.shield() to put a
        timeout on the wait.
        """
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"message store at {self.path} is not started")
        with self._lock:
            if self._failed is not None:
                fut: asyncio.Future[None] = loop.create_future()
                fut.set_exception(self._failed)
                return fut
            gens = self._gens
            if gens[-1].nops:
                target = gens[-1]
            elif len(gens) > 1:
                # The open generation is empty; the newest sealed one holds the last op.
                target = gens[-2]
            else:
                fut = loop.create_future()
                fut.set_result(None)
                return fut
            if target.future is None or target.future.cancelled():
                target.future = loop.create_future()
            return target.future

    # Both helpers run with self._lock held.

    def _open_gen(self) -> _Generation:
        if self._failed is not None:
            raise StoreError(
                f"message store at {self.path} failed: {self._failed!r}"
            ) from self._failed
        if self._closing:
            raise StoreError(f"message store at {self.path} is closed")
        return self._gens[-1]

    def _enqueued(self, gen: _Generation) -> None:
        gen.nops += 1
        if gen.nops >= MAX_BATCH_OPS or gen.nbytes >= MAX_BATCH_BYTES:
            gen.sealed = True
            self._gens.append(_Generation())
        if self._writer_idle:
            self._writer_idle = False
            self._wake.notify()

    # ------------------------------------------------------------------ reads

    def _view(self, queue: str) -> _View | None:
        with self._lock:
            layers = [g.queues[queue] for g in self._gens if queue in g.queues]
        # The layers are captured BEFORE the read transaction starts: a generation committed
        # in between is then both in the snapshot and in the layers, and re-applying it is
        # harmless.  The other order could miss it altogether.
        return _View(layers) if layers else None

    def read_range(self, queue: str, start_seq: int, limit: int) -> list[tuple[int, bytes, bool]]:
        """Up to ``limit`` messages ``(seq, record, delivered)`` of ``queue`` with
        ``seq >= start_seq``, ascending, including writes not yet committed."""
        prefix = queue_prefix(queue)
        if limit <= 0:
            return []
        start_seq = max(start_seq, 0)
        view = self._view(queue)
        with self._map_lock, self._env.begin() as txn:
            marks = txn.cursor(self._delivered)

            def marked(seq: int) -> bool:
                return marks.set_key(prefix + seq.to_bytes(SEQ_BYTES, "big"))

            def base() -> Iterator[tuple[int, bytes, bool]]:
                cur = txn.cursor(self._msgs)
                if not cur.set_range(prefix + start_seq.to_bytes(SEQ_BYTES, "big")):
                    return
                for key, value in cur.iternext():
                    if not key.startswith(prefix):
                        return
                    seq = seq_of(key)
                    if view is not None and view.skips_base(seq):
                        continue
                    mark = marked(seq)
                    if view is not None and mark and seq in view.marks_del:
                        mark = False
                    yield seq, value, mark or (view is not None and seq in view.marks_add)

            if view is None:
                items: Iterator[tuple[int, bytes, bool]] = base()
            else:
                extra = [
                    (
                        s,
                        view.extra[s],
                        s in view.marks_add
                        or (view.base_visible and s not in view.marks_del and marked(s)),
                    )
                    for s in sorted(s for s in view.extra if s >= start_seq)
                ]
                items = (
                    heapq.merge(base(), extra, key=lambda item: item[0])
                    if view.base_visible
                    else iter(extra)
                )
            out = []
            for item in items:
                out.append(item)
                if len(out) >= limit:
                    break
            return out

    def count(self, queue: str, start_seq: int = 0) -> tuple[int, int]:
        """``(messages, total record bytes)`` of ``queue`` with ``seq >= start_seq``,
        including writes not yet committed.  O(n): walks the queue's keys."""
        prefix = queue_prefix(queue)
        start_seq = max(start_seq, 0)
        view = self._view(queue)
        n = size = 0
        if view is not None:
            for s, rec in view.extra.items():
                if s >= start_seq:
                    n += 1
                    size += len(rec)
            if not view.base_visible:
                return n, size
        # buffers=True: len() of a memoryview into the map, no copy of the record.
        with self._map_lock, self._env.begin(buffers=True) as txn:
            cur = txn.cursor(self._msgs)
            if not cur.set_range(prefix + start_seq.to_bytes(SEQ_BYTES, "big")):
                return n, size
            for key, value in cur.iternext():
                if not bytes(key[: len(prefix)]) == prefix:
                    break
                if view is not None and view.skips_base(seq_of(key)):
                    continue
                n += 1
                size += len(value)
        return n, size

    def last_seq(self, queue: str) -> int:
        """The highest stored seq of ``queue`` (including uncommitted puts), or 0."""
        prefix = queue_prefix(queue)
        view = self._view(queue)
        best = max(view.extra, default=0) if view is not None else 0
        if view is not None and not view.base_visible:
            return best
        with self._map_lock, self._env.begin() as txn:
            cur = txn.cursor(self._msgs)
            if cur.set_range(last_key(prefix)):
                if cur.key() != last_key(prefix) and not cur.prev():
                    return best
            elif not cur.last():
                return best
            for key in cur.iterprev(keys=True, values=False):
                if not key.startswith(prefix):
                    break
                seq = seq_of(key)
                if view is None or not view.skips_base(seq):
                    return max(best, seq)
        return best

    def queues(self) -> set[str]:
        """Names of the queues that have committed messages."""
        names: set[str] = set()
        with self._map_lock, self._env.begin() as txn:
            cur = txn.cursor(self._msgs)
            found = cur.first()
            while found:
                key = cur.key()
                prefix = key[: 1 + key[0]]
                names.add(prefix[1:].decode("utf-8"))
                # Jump over the rest of this queue instead of walking its messages.
                found = cur.set_range(last_key(prefix))
                if found and cur.key().startswith(prefix):
                    found = cur.next()
        return names

    # ------------------------------------------------------------------ writer thread

    def _writer_main(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._gens[0].nops and not self._closing:
                        self._writer_idle = True
                        self._wake.wait()
                    self._writer_idle = False
                    gen = self._gens[0]
                    if not gen.nops:
                        break  # closing and drained
                    if not gen.sealed:
                        gen.sealed = True
                        self._gens.append(_Generation())
                self._commit(gen)
                self._written_since_trim += gen.nops
                if (self._written_since_trim >= TRIM_EVERY_OPS
                        and time.monotonic() - self._last_trim >= TRIM_MIN_INTERVAL):
                    # only the LMDB map; safe while readers use it (they fault pages back)
                    release_mapped_pages(os.path.join(self.path, "data.mdb"))
                    self._written_since_trim = 0
                    self._last_trim = time.monotonic()
                with self._lock:
                    self._gens.popleft()
                    fut = gen.future
                self.stats["commits"] += 1
                self.stats["ops"] += gen.nops
                self.stats["last_batch_size"] = gen.nops
                if fut is not None:
                    self._call_on_loop(_resolve, fut)
        except BaseException as exc:  # noqa: B036 - confirms must never hang, whatever it is
            log.exception("message store writer for %s failed", self.path)
            with self._lock:
                self._failed = exc
                futures = [g.future for g in self._gens if g.future is not None]
            for fut in futures:
                self._call_on_loop(_reject, fut, exc)
        finally:
            if self._stopped is not None:
                self._call_on_loop(_resolve, self._stopped)

    def _call_on_loop(self, fn: Any, *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # loop already closed: nobody is left to wait

    def _commit(self, gen: _Generation) -> None:
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    self._apply(txn, gen)
                    t0 = time.perf_counter()
                    # __exit__ commits; with sync=True that is where both fsyncs happen.
                self.stats["fsync_seconds_total"] += time.perf_counter() - t0
                return
            except lmdb.MapFullError:
                # The transaction was aborted on the way out of `with`, so no transaction of
                # this thread is open; readers are kept out by _map_lock.
                with self._map_lock:
                    new_size = self._env.info()["map_size"] * 2
                    self._env.set_mapsize(new_size)
                self.stats["map_resizes"] += 1
                log.info("message store %s: map grown to %d bytes", self.path, new_size)

    def _apply(self, txn: lmdb.Transaction, gen: _Generation) -> None:
        msgs = txn.cursor(self._msgs)
        marks = txn.cursor(self._delivered)
        for queue, q in gen.queues.items():
            prefix = queue_prefix(queue)
            if q.cleared:
                for cur in (msgs, marks):
                    if cur.set_range(prefix):
                        # delete() moves the cursor to the next record.
                        while bytes(cur.key()).startswith(prefix) and cur.delete():
                            pass
            for seq in q.deletes:
                key = prefix + seq.to_bytes(SEQ_BYTES, "big")
                if msgs.set_key(key):
                    msgs.delete()
                if marks.set_key(key):
                    marks.delete()
            if q.puts:
                msgs.putmulti(
                    sorted(
                        (prefix + s.to_bytes(SEQ_BYTES, "big"), rec) for s, rec in q.puts.items()
                    )
                )
            for seq in q.delivered:
                key = prefix + seq.to_bytes(SEQ_BYTES, "big")
                # A mark for a message that is already gone would never be cleaned up.
                if msgs.set_key(key):
                    marks.put(key, b"")
