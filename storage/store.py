"""The per-vhost message store: opaque records per queue in an LMDB environment.

Threading model (everything below depends on it):

* Every public method is called from one asyncio event-loop thread.
* One dedicated writer thread owns every LMDB write transaction.
* One reader thread serves the ``*_async`` reads (a queue's page-in, recovery's scan), so
  that the event loop, which serves every vhost of the node, never waits on the disk; the
  synchronous reads remain for tests, tools and rare paths.  The overlay of uncommitted
  generations such a read needs is copied on the loop before it is handed over.  Writes are queued as
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

Replication.  Every commit is one *record* with an offset (1, 2, 3, ...) and
the epoch of the owner that wrote it; the store's position ``(epoch, offset)`` is written
in the same transaction, so it always says exactly what the files hold.  With a change log
enabled (a vhost that has replicas), the writer encodes each generation
(`storage.records`) before committing it and hands it to the loop (`on_record`), so the
owner streams it while its own fsync runs.  A replica's store takes the owner's records
with `apply_record` (merged into generations, so a replica group-commits too) or a whole
snapshot (`begin_snapshot` / `load_snapshot` / `end_snapshot`).  The replication layer
attaches one `ReplicationHook` (`attach` / `detach`): it hears each record before the
commit and alone decides when a committed generation's flush() future is released (once
the in-sync replicas have the record too).

Numbering.  A generation is numbered when it is sealed, under the lock, with the epoch in
force then; a change of role (`takeover`, `become_replica`) first seals the open
generation, so no generation ever mixes a previous owner's records with this node's own
writes, and the writer thread never touches the position fields unlocked.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import lmdb
import msgpack

from storage import records, space
from storage.changelog import ChangeLog
from storage.keys import SEQ_BYTES, check_seq, last_key, queue_prefix, seq_of
from storage.reserve import Reserve
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
_DB_META = b"meta"
# (epoch, offset) of the last committed record; offset -1 while a snapshot is half loaded
_KEY_POSITION = b"position"
# [[epoch, first offset of that epoch], ...]: where each owner's history began
_KEY_EPOCHS = b"epochs"

SNAPSHOT_CHUNK_BYTES = 4 << 20

_T = TypeVar("_T")


class ReplicationHook(Protocol):
    """What the replication layer attaches to an owner's store (both run on the loop)."""

    def record(self, offset: int, epoch: int, payload: bytes) -> None:
        """A numbered generation, encoded, before the owner's own commit (stream it)."""

    def committed(self, offset: int, fut: asyncio.Future[None] | None) -> None:
        """The generation at ``offset`` is durable here; ``fut`` (its flush() future) is
        the hook's to resolve or reject."""


class StoreError(Exception):
    """The store is closed or its writer thread failed; no further writes are accepted."""


class _SnapshotAbandoned(Exception):
    """The reader of a snapshot went away."""


class _QueueOps:
    """Net effect of one generation's ops on one queue.

    Applied in this order: ``cleared`` (delete_queue), ``ranges`` (purge_range), ``deletes``,
    ``puts``, ``delivered``.
    """

    __slots__ = ("cleared", "ranges", "puts", "deletes", "delivered")

    def __init__(self) -> None:
        self.cleared = False
        # [lo, hi): every message and mark of the queue with lo <= seq < hi goes
        self.ranges: list[tuple[int, int]] = []
        self.puts: dict[int, bytes] = {}
        # A delete stays here even when it cancelled a put of this generation: the key may
        # also exist on disk (a re-put seq), and a delete that misses dirties no page, so a
        # batch of such misses commits without any fsync.
        self.deletes: set[int] = set()
        self.delivered: set[int] = set()

    def clear(self) -> int:
        """delete_queue: everything before goes; returns the puts this cancelled."""
        n = len(self.puts)
        self.cleared = True
        self.ranges = []
        self.puts = {}
        self.deletes = set()
        self.delivered = set()
        return n

    def add_range(self, lo: int, hi: int) -> int:
        """purge_range: returns the puts this cancelled."""
        gone = [s for s in self.puts if lo <= s < hi]
        for s in gone:
            del self.puts[s]
        if self.delivered:
            self.delivered.difference_update([s for s in self.delivered if lo <= s < hi])
        self.ranges.append((lo, hi))
        return len(gone)

    def copy(self) -> "_QueueOps":
        q = _QueueOps()
        q.cleared = self.cleared
        q.ranges = list(self.ranges)
        q.puts = dict(self.puts)
        q.deletes = set(self.deletes)
        q.delivered = set(self.delivered)
        return q


def _in_ranges(ranges: list[tuple[int, int]], seq: int) -> bool:
    for lo, hi in ranges:
        if lo <= seq < hi:
            return True
    return False


class _Generation:
    __slots__ = ("queues", "nops", "nbytes", "sealed", "future", "position", "reset", "raw",
                 "meta", "local")

    def __init__(self) -> None:
        self.queues: dict[str, _QueueOps] = {}
        self.nops = 0
        self.nbytes = 0
        self.sealed = False
        self.future: asyncio.Future[None] | None = None
        # (epoch, offset) of the owner's record merged last (a replica's store); None on
        # the owner, whose writer numbers its generations itself
        self.position: tuple[int, int] | None = None
        self.reset = False  # a snapshot begins: empty every table first
        self.raw: list[tuple[bytes, bytes | None]] = []  # snapshot rows: (key, msg or None=mark)
        self.meta: dict[bytes, bytes] = {}
        # numbered by this node as owner (streamed as a record), not taken from an owner
        self.local = False

    def ops_for(self, queue: str) -> _QueueOps:
        q = self.queues.get(queue)
        if q is None:
            q = self.queues[queue] = _QueueOps()
        return q


def _changes_of(gen: _Generation) -> list[records.QueueChange]:
    return [(name, q.cleared, q.puts, list(q.deletes), list(q.delivered), list(q.ranges))
            for name, q in gen.queues.items()]


class _View:
    """Uncommitted state of one queue, folded over every pending generation."""

    __slots__ = ("base_visible", "extra", "hidden", "marks_add", "marks_del", "ranges")

    def __init__(self, layers: list[_QueueOps]) -> None:
        if len(layers) == 1:
            # Common case: share the generation's containers instead of copying them.
            q = layers[0]
            self.base_visible = not q.cleared
            self.extra = q.puts
            self.hidden: set[int] = q.deletes
            self.marks_add = q.delivered
            self.marks_del = q.deletes
            self.ranges = q.ranges
            return
        self.base_visible = True
        self.extra = {}
        self.hidden = set()
        self.marks_add = set()
        self.marks_del = set()
        self.ranges = []
        for q in layers:
            if q.cleared:
                self.base_visible = False
                self.extra.clear()
                self.hidden.clear()
                self.marks_add.clear()
                self.marks_del.clear()
                self.ranges.clear()
            for lo, hi in q.ranges:
                for s in [s for s in self.extra if lo <= s < hi]:
                    del self.extra[s]
                self.marks_add.difference_update(
                    [s for s in self.marks_add if lo <= s < hi])
                self.ranges.append((lo, hi))
            for s in q.deletes:
                self.extra.pop(s, None)
                self.hidden.add(s)
                self.marks_add.discard(s)
                self.marks_del.add(s)
            self.extra.update(q.puts)
            self.marks_add.update(q.delivered)

    def skips_base(self, seq: int) -> bool:
        return (seq in self.hidden or seq in self.extra
                or (bool(self.ranges) and _in_ranges(self.ranges, seq)))

    def base_mark_gone(self, seq: int) -> bool:
        """The committed delivered mark of ``seq`` (if any) is deleted by a pending op."""
        return seq in self.marks_del or (bool(self.ranges) and _in_ranges(self.ranges, seq))


class _MapLock:
    """Readers share the LMDB map; set_mapsize() waits until no read transaction is open.

    Shared, not exclusive, so that a snapshot streamed to a replica (one long read
    transaction on another thread) never blocks the loop's own reads."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0

    def __enter__(self) -> None:
        with self._cond:
            self._readers += 1

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def exclusive(self) -> "_Exclusive":
        return _Exclusive(self._cond, self)


class _Exclusive:
    def __init__(self, cond: threading.Condition, owner: _MapLock) -> None:
        self._cond = cond
        self._owner = owner

    def __enter__(self) -> None:
        self._cond.acquire()
        while self._owner._readers:
            self._cond.wait()

    def __exit__(self, *exc: object) -> None:
        self._cond.release()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _reject(fut: asyncio.Future[None], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _reject_quietly(fut: asyncio.Future[None], exc: BaseException) -> None:
    """_reject() a future that may have no waiter at all (no 'never retrieved' warning)."""
    _reject(fut, exc)
    if not fut.cancelled():
        fut.exception()


# LMDB's lock file (its reader table: 8 KiB and 64 bytes a reader, 126 by default) with room
LOCK_FILE_BYTES = 64 << 10


def _allocate_lock_file(path: str) -> None:
    """Back the LMDB lock file of the store at ``path`` with disk blocks before LMDB maps
    it: LMDB sizes a new one by ftruncate (sparse), and touching its pages on a full disk
    killed the node with SIGBUS (a replica's store opened after the disk had filled).  A
    full disk now refuses the open with OSError(ENOSPC) instead."""
    os.makedirs(path, exist_ok=True)
    fd = os.open(os.path.join(path, "lock.mdb"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size < LOCK_FILE_BYTES:
            os.posix_fallocate(fd, 0, LOCK_FILE_BYTES)
    finally:
        os.close(fd)


class MessageStore:
    """Ordered, durable message records per queue, with group-committed writes."""

    def __init__(
        self, path: str | os.PathLike[str], *, sync: bool = True, map_size: int = 1 << 36,
        reserve: Reserve | None = None,
    ) -> None:
        self.path = os.fspath(path)
        _allocate_lock_file(self.path)
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
        self._meta = self._env.open_db(_DB_META)
        with self._env.begin() as txn:
            raw = txn.get(_KEY_POSITION, db=self._meta)
            position = tuple(msgpack.unpackb(raw)) if raw else (0, 0)
            raw = txn.get(_KEY_EPOCHS, db=self._meta)
            self.epochs: list[list[int]] = msgpack.unpackb(raw) if raw else []
        # Position of the last committed record: the writer thread updates it.
        self.position: tuple[int, int] = (int(position[0]), int(position[1]))
        # The writer numbers the owner's generations from here; the epoch they carry.
        self._last_offset = max(self.position[1], 0)
        self.epoch = self.position[0]
        # Kept while the vhost has replicas (keep_changelog); loop thread only.
        self.changelog: ChangeLog | None = None
        # The replication layer's hook (attach/detach); read by the writer thread.
        self._hook: ReplicationHook | None = None
        # False once this node no longer owns the vhost: late writes of its torn-down
        # runtime (an ack on a closing connection) are dropped instead of forking history.
        self.local_writes = True
        # A replica's store takes its records' positions from the owner instead of numbering.
        self.replica = False

        # Guards _gens, every open generation's contents, _closing, _failed, _writer_idle.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._gens: deque[_Generation] = deque([_Generation()])
        self._writer_idle = False
        self._closing = False
        # True while an owner waits for its term's epoch (`hold`): its writes collect in
        # the open generation, unnumbered and uncommitted, until `takeover` numbers them
        # in the new epoch
        self._held = False
        self._failed: BaseException | None = None
        self._written_since_trim = 0
        self._last_trim = 0.0
        # set_mapsize() must not run while any transaction of this process is open; reads
        # hold this (shared) lock for the life of their read transaction.
        self._map_lock = _MapLock()
        # free space inside the file, the node's reserve, and whether the disk is full
        self.space = space.StoreSpace(self.path, self._env,
                                      [self._msgs, self._delivered, self._meta],
                                      self._map_lock, reserve)

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._reader: ThreadPoolExecutor | None = None  # the *_async reads, made on first use
        self._stopped: asyncio.Future[None] | None = None
        self._closed = False
        self.stats: dict[str, Any] = {
            "commits": 0,
            "ops": 0,
            "last_batch_size": 0,
            "fsync_seconds_total": 0.0,
            "cancelled_puts": 0,
            "map_resizes": 0,
            "shed_puts": 0,
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

    def problem(self) -> str | None:
        """Why this store cannot take writes now (health checks), or None when it can."""
        if self._closed or self._closing:
            return "closed"
        if self._thread is None or not self._thread.is_alive():
            return "writer thread not running"
        if self._failed is not None:
            return f"writer failed: {self._failed!r}"
        return None

    async def close(self) -> None:
        """Commit everything queued, stop the writer thread and close the environment."""
        if self._closed:
            return
        if self._thread is None:
            self.start(asyncio.get_running_loop())
        assert self._stopped is not None
        with self._lock:
            self._drop_held(f"message store at {self.path} closed before this node's term "
                            "as owner began")
            self._closing = True
            self._wake.notify()
        await self._stopped
        self._closed = True
        if self._reader is not None:
            # one worker, first in first out: once this no-op ran, every read is done
            await asyncio.wrap_future(self._reader.submit(lambda: None))
            self._reader.shutdown(wait=False)
        self._env.close()

    # ------------------------------------------------------------------ writes

    def put(self, queue: str, seq: int, record: bytes) -> None:
        """Store ``record`` as message ``seq`` of ``queue`` (overwrites an existing one)."""
        queue_prefix(queue)  # validates the name here, not later on the writer thread
        check_seq(seq)
        if not self.local_writes:
            return
        with self._lock:
            gen = self._open_gen()
            gen.ops_for(queue).puts[seq] = record
            gen.nbytes += len(record)
            self._enqueued(gen)

    def delete(self, queue: str, seq: int) -> None:
        """Remove message ``seq`` of ``queue`` and its delivered mark."""
        queue_prefix(queue)
        check_seq(seq)
        if not self.local_writes:
            return
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
        if not self.local_writes:
            return
        with self._lock:
            gen = self._open_gen()
            gen.ops_for(queue).delivered.add(seq)
            self._enqueued(gen)

    def delete_queue(self, queue: str) -> None:
        """Remove every message and delivered mark of ``queue``."""
        queue_prefix(queue)
        if not self.local_writes:
            return
        with self._lock:
            gen = self._open_gen()
            self.stats["cancelled_puts"] += gen.ops_for(queue).clear()
            self._enqueued(gen)

    def purge_range(self, queue: str, lo: int, hi: int) -> None:
        """Remove every message and delivered mark of ``queue`` with ``lo <= seq < hi``: one
        op and one record however many messages that is, deleted on the writer thread
        without reading them on the loop (a purge of a paged queue)."""
        queue_prefix(queue)
        check_seq(lo)
        check_seq(hi)
        if lo >= hi or not self.local_writes:
            return
        with self._lock:
            gen = self._open_gen()
            self.stats["cancelled_puts"] += gen.ops_for(queue).add_range(lo, hi)
            self._enqueued(gen)

    def delete_many(self, queue: str, seqs: list[int]) -> None:
        """delete() of each of ``seqs``, in one lock acquisition per batch."""
        queue_prefix(queue)
        if not seqs or not self.local_writes:
            return
        check_seq(min(seqs))
        check_seq(max(seqs))
        for i in range(0, len(seqs), MAX_BATCH_OPS):
            chunk = seqs[i:i + MAX_BATCH_OPS]
            with self._lock:
                gen = self._open_gen()
                q = gen.ops_for(queue)
                if q.puts:
                    for seq in chunk:
                        if q.puts.pop(seq, None) is not None:
                            self.stats["cancelled_puts"] += 1
                q.deletes.update(chunk)
                if q.delivered:
                    q.delivered.difference_update(chunk)
                gen.nops += len(chunk) - 1
                self._enqueued(gen)

    # ------------------------------------------------------------------ replication

    @property
    def last_offset(self) -> int:
        """Offset of the newest record this store has numbered or taken (maybe not yet
        committed)."""
        with self._lock:
            return self._last_offset

    def attach(self, hook: ReplicationHook) -> None:
        """Stream this owner's records to ``hook`` and let it release flush() futures."""
        self._hook = hook

    def detach(self, hook: ReplicationHook) -> None:
        """Undo `attach` (only if ``hook`` is still the one attached)."""
        if self._hook is hook:
            self._hook = None

    def keep_changelog(self, max_bytes: int | None = None) -> ChangeLog:
        """Keep recent records in memory (a vhost with replicas), from the next offset on."""
        if self.changelog is None:
            log_ = ChangeLog() if max_bytes is None else ChangeLog(max_bytes)
            log_.expect(self.last_offset + 1)
            self.changelog = log_
        return self.changelog

    def drop_changelog(self) -> None:
        if self.changelog is not None:
            self.changelog.close()
        self.changelog = None

    def hold(self) -> None:
        """This node owns the vhost but its term's epoch is not committed yet: nothing it
        writes may be numbered (in the previous term's epoch, it could collide with records
        that term streamed and never committed) until `takeover`."""
        with self._lock:
            self._seal_open()
            self._held = True

    def _drop_held(self, why: str) -> None:
        # with self._lock held: the writes of a term that never began are not kept
        if not self._held:
            return
        self._held = False
        gen = self._gens[-1]
        if gen.nops and not gen.sealed:
            self._gens[-1] = _Generation()
            if gen.future is not None and self._loop is not None:
                self._call_on_loop(_reject, gen.future, StoreError(why))

    def takeover(self, epoch: int) -> None:
        """This node now owns the vhost at ``epoch``: what it took from the previous owner
        is sealed as it is, and its own records are numbered after it, the first of them
        marking where this epoch's history begins (the replicas learn the epoch from it)."""
        with self._lock:
            if self._held:
                self._held = False  # what was held belongs to this term
            else:
                self._seal_open()
            self.replica = False
            self.local_writes = True
            self.epoch = epoch
            start = self._last_offset + 1
            self.epochs = [e for e in self.epochs if e[0] < epoch] + [[epoch, start]]
            gen = self._open_gen()
            gen.meta[_KEY_EPOCHS] = msgpack.packb(self.epochs)
            self._enqueued(gen)

    def become_replica(self) -> None:
        """Stop taking this node's own writes; records come from the owner from now on.
        What this node wrote as owner and has not committed yet keeps its own numbers (a
        history the new owner may not share: the histories' comparison decides), and its
        flush futures fail: none of it may be confirmed."""
        with self._lock:
            self._drop_held(f"message store at {self.path}: this node's term as owner "
                            "never began")
            self._seal_open()
            self.replica = True
            self.local_writes = False
        self._hook = None

    def adopt_epochs(self, epochs: list[list[int]]) -> None:
        """A replica keeps the owner's epoch history: it decides, should this node become
        the owner, which of another replica's records are shared history."""
        self.epochs = [[int(e), int(o)] for e, o in epochs]
        with self._lock:
            gen = self._open_gen()
            gen.meta[_KEY_EPOCHS] = msgpack.packb(self.epochs)
            self._enqueued(gen)

    def apply_record(self, offset: int, epoch: int, payload: bytes) -> asyncio.Future[None]:
        """Merge one of the owner's records (a replica's store).  The future resolves once
        it is durable here.  Raises records.RecordError on a malformed record."""
        changes = records.decode(payload)
        with self._lock:
            gen = self._open_gen()
            for queue, cleared, puts, deletes, delivered, ranges in changes:
                q = gen.ops_for(queue)
                if cleared:
                    q.clear()
                for lo, hi in ranges:
                    q.add_range(lo, hi)
                for seq in deletes:
                    q.puts.pop(seq, None)
                    q.deletes.add(seq)
                    q.delivered.discard(seq)
                for seq, rec in puts.items():
                    q.puts[seq] = rec
                    gen.nbytes += len(rec)
                q.delivered.update(delivered)
            gen.position = (epoch, offset)
            self._last_offset = offset
            if not self.epochs or epoch > self.epochs[-1][0]:
                # a new owner's first record: where its epoch begins in this history
                self.epochs = [*self.epochs, [epoch, offset]]
                gen.meta[_KEY_EPOCHS] = msgpack.packb(self.epochs)
            self._enqueued(gen)
        if self.changelog is not None:
            self.changelog.append(offset, epoch, payload)
        return self._flush()

    def begin_snapshot(self) -> None:
        """Empty the store before a snapshot's rows arrive; until `end_snapshot` commits,
        the position says offset -1 (a crash half way leaves a store nobody trusts)."""
        with self._lock:
            self._open_gen()
            # earlier ops must not survive the reset in the same transaction
            gen = self._seal_open()
            gen.reset = True
            gen.position = (0, -1)
            self._last_offset = 0
            self._enqueued(gen)
        if self.changelog is not None:
            self.changelog.clear()

    def load_snapshot(self, rows: list[tuple[bytes, bytes | None]]) -> None:
        """Rows of a snapshot: ``(key, message record)``, or ``(key, None)`` for a
        delivered mark."""
        with self._lock:
            gen = self._open_gen()
            gen.raw.extend(rows)
            gen.nbytes += sum(len(v) for _, v in rows if v is not None)
            self._enqueued(gen)

    def end_snapshot(self, position: tuple[int, int], epochs: list[list[int]]
                     ) -> asyncio.Future[None]:
        with self._lock:
            gen = self._open_gen()
            gen.position = (int(position[0]), int(position[1]))
            gen.meta[_KEY_EPOCHS] = msgpack.packb(epochs)
            self._last_offset = gen.position[1]
            self._enqueued(gen)
        self.epochs = [list(e) for e in epochs]
        return self._flush()

    async def snapshot(self, chunk_bytes: int = SNAPSHOT_CHUNK_BYTES
                       ) -> AsyncIterator[tuple[Any, ...]]:
        """The committed contents as of one transaction: ``("begin", position, epochs,
        estimated bytes)``,
        then ``("rows", [(key, record or None), ...])`` chunks.  Read on a thread of its
        own so that the loop never waits; the writer goes on committing meanwhile."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(maxsize=2)
        stop = threading.Event()

        def put(item: tuple[Any, ...]) -> None:
            if stop.is_set():
                raise _SnapshotAbandoned
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

        def produce() -> None:
            try:
                with self._map_lock, self._env.begin() as txn:
                    raw = txn.get(_KEY_POSITION, db=self._meta)
                    position = tuple(msgpack.unpackb(raw)) if raw else (0, 0)
                    raw = txn.get(_KEY_EPOCHS, db=self._meta)
                    # the size it will copy, estimated from the pages (a move's progress)
                    size_of = sum(st["psize"] * (st["leaf_pages"] + st["overflow_pages"])
                                  for st in (txn.stat(self._msgs), txn.stat(self._delivered)))
                    put(("begin", position, msgpack.unpackb(raw) if raw else [], size_of))
                    rows: list[tuple[bytes, bytes | None]] = []
                    size = 0
                    for key, value in txn.cursor(self._msgs):
                        rows.append((key, value))
                        size += len(key) + len(value)
                        if size >= chunk_bytes:
                            put(("rows", rows))
                            rows, size = [], 0
                    for key in txn.cursor(self._delivered).iternext(values=False):
                        rows.append((key, None))
                        size += len(key)
                        if size >= chunk_bytes:
                            put(("rows", rows))
                            rows, size = [], 0
                    if rows:
                        put(("rows", rows))
                put(("end",))
            except _SnapshotAbandoned:
                pass
            except BaseException as exc:  # noqa: B036 - the reader must hear of it
                try:
                    put(("error", exc))
                except _SnapshotAbandoned:
                    pass

        threading.Thread(target=produce, name=f"store-snapshot:{self.path}",
                         daemon=True).start()
        try:
            while True:
                item = await queue.get()
                if item[0] == "error":
                    raise StoreError(f"snapshot of {self.path} failed: {item[1]!r}")
                if item[0] == "end":
                    return
                yield item
        finally:
            stop.set()
            while not queue.empty():  # unblock a producer waiting to put
                queue.get_nowait()

    def digest(self) -> tuple[asyncio.Future[tuple[int, int]], asyncio.Future[str]]:
        """A digest of the committed contents as of one read transaction, to compare the
        copies of a vhost: SHA-256 of the position (epoch, offset) and of every key and
        value of the messages and the delivered marks, in key order.  The first future
        resolves with the transaction's position as soon as it is open (writes may go on
        from then: the transaction reads a snapshot), the second with the hex digest,
        computed on a thread of its own."""
        loop = self._loop or asyncio.get_running_loop()
        opened: asyncio.Future[tuple[int, int]] = loop.create_future()
        done: asyncio.Future[str] = loop.create_future()

        def settle(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
            if fut.done():
                return
            if error is not None:
                fut.set_exception(StoreError(f"digest of {self.path} failed: {error!r}"))
            else:
                fut.set_result(value)

        def compute() -> None:
            try:
                h = hashlib.sha256()
                with self._map_lock, self._env.begin() as txn:
                    raw = txn.get(_KEY_POSITION, db=self._meta)
                    epoch, offset = msgpack.unpackb(raw) if raw else (0, 0)
                    position = (int(epoch), int(offset))
                    loop.call_soon_threadsafe(settle, opened, position, None)
                    h.update(b"position %d %d\n" % position)
                    for name, db in ((_DB_MSGS, self._msgs), (_DB_DELIVERED, self._delivered)):
                        h.update(name + b"\n")
                        for key, value in txn.cursor(db):
                            h.update(len(key).to_bytes(4, "big") + key
                                     + len(value).to_bytes(4, "big"))
                            h.update(value)
                loop.call_soon_threadsafe(settle, done, h.hexdigest(), None)
            except BaseException as exc:  # noqa: B036 - the caller must hear of it
                loop.call_soon_threadsafe(settle, opened, None, exc)
                loop.call_soon_threadsafe(settle, done, None, exc)

        if self._closing or self._closed:
            error = StoreError(f"message store at {self.path} is closed")
            opened.set_exception(error)
            done.set_exception(error)
        else:
            threading.Thread(target=compute, name=f"store-digest:{self.path}",
                             daemon=True).start()
        return opened, done

    @property
    def pending_bytes(self) -> int:
        """Record bytes queued and not yet committed.  Publishers are no longer read above
        a bound (node side), so a disk slower than they are cannot make this grow forever."""
        with self._lock:
            return sum(g.nbytes for g in self._gens)

    def flush(self) -> asyncio.Future[None]:
        """A future that resolves once every op enqueued before this call is durable.

        Calls between two commits share one future, so calling this per message is cheap.
        Because the future is shared, do not cancel it; wrap it in asyncio.shield() to put a
        timeout on the wait.  Fails while local writes are off (this node no longer owns
        the vhost): what a caller just wrote was dropped, and must not be confirmed.
        """
        if not self.local_writes:
            assert self._loop is not None
            fut: asyncio.Future[None] = self._loop.create_future()
            fut.set_exception(StoreError(f"message store at {self.path} takes no local "
                                         "writes: this node no longer owns the vhost"))
            return fut
        return self._flush()

    def sync_point(self) -> asyncio.Future[None]:
        """Like flush(), for the replication layer: resolves once everything enqueued so
        far (local or replicated) is durable here, whatever the role."""
        return self._flush()

    def _flush(self) -> asyncio.Future[None]:
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
            self._seal_open()
        if self._writer_idle:
            self._writer_idle = False
            self._wake.notify()

    def _seal_open(self) -> _Generation:
        """Seal the open generation if it holds anything, numbering it when it is this
        owner's own; returns the (new) open generation."""
        gen = self._gens[-1]
        if gen.nops and not self._held:
            gen.sealed = True
            if gen.position is None and not self.replica:
                self._last_offset += 1
                gen.position = (self.epoch, self._last_offset)
                gen.local = True
            gen = _Generation()
            self._gens.append(gen)
        return gen

    # ------------------------------------------------------------------ reads

    def _view(self, queue: str, copy: bool = False) -> _View | None:
        """The pending ops of ``queue``.  ``copy``: for a read on another thread, which must
        not share the open generation's containers with the loop that keeps filling them."""
        with self._lock:
            layers = [g.queues[queue] for g in self._gens if queue in g.queues]
            if copy and layers and layers[-1] is self._gens[-1].queues.get(queue):
                layers[-1] = layers[-1].copy()
        # The layers are captured BEFORE the read transaction starts: a generation committed
        # in between is then both in the snapshot and in the layers, and re-applying it is
        # harmless.  The other order could miss it altogether.
        return _View(layers) if layers else None

    def read_range(self, queue: str, start_seq: int, limit: int) -> list[tuple[int, bytes, bool]]:
        """Up to ``limit`` messages ``(seq, record, delivered)`` of ``queue`` with
        ``seq >= start_seq``, ascending, including writes not yet committed."""
        prefix = queue_prefix(queue)
        return self._read_range(prefix, max(start_seq, 0), limit, self._view(queue))

    def read_range_async(self, queue: str, start_seq: int, limit: int
                         ) -> asyncio.Future[list[tuple[int, bytes, bool]]]:
        """read_range() on the reader thread: the loop does not wait for the disk.  What
        it returns is as of the call (pending writes included), or newer."""
        prefix = queue_prefix(queue)
        return self._on_reader(self._read_range, prefix, max(start_seq, 0), limit,
                               self._view(queue, copy=True))

    def scan_async(self, queue: str, upto: list[int], keep: Callable[[bytes], bool]
                   ) -> asyncio.Future[tuple[int, int, int, int, list[int]]]:
        """Walk the messages of ``queue`` with ``seq <= upto[0]`` on the reader thread (a
        recovering queue): ``(first kept seq or 0, kept messages, their record bytes, last
        seq seen or 0, seqs of the records keep() refused)``.  ``upto`` is read as the walk
        goes: lower it on the loop before putting a seq past it, and the walk will not count
        that one.  keep() sees a record (maybe a memoryview), on the reader thread."""
        prefix = queue_prefix(queue)
        return self._on_reader(self._scan, prefix, upto, keep, self._view(queue, copy=True))

    def _on_reader(self, fn: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        loop = self._loop or asyncio.get_running_loop()
        if self._closing or self._closed:
            fut: asyncio.Future[_T] = loop.create_future()
            fut.set_exception(StoreError(f"message store at {self.path} is closed"))
            return fut
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="store-reader")
        return asyncio.wrap_future(self._reader.submit(fn, *args), loop=loop)

    def _items(self, txn: lmdb.Transaction, prefix: bytes, start_seq: int,
               view: _View | None, with_marks: bool = True
               ) -> Iterator[tuple[int, Any, bool]]:
        """``(seq, record, delivered)`` of one queue from ``start_seq`` on, ascending, with
        the pending ops of ``view`` laid over the transaction's snapshot."""
        marks = txn.cursor(self._delivered)

        def marked(seq: int) -> bool:
            return with_marks and marks.set_key(prefix + seq.to_bytes(SEQ_BYTES, "big"))

        def base() -> Iterator[tuple[int, Any, bool]]:
            cur = txn.cursor(self._msgs)
            if not cur.set_range(prefix + start_seq.to_bytes(SEQ_BYTES, "big")):
                return
            for key, value in cur.iternext():
                if not bytes(key[: len(prefix)]) == prefix:
                    return
                seq = seq_of(key)
                if view is not None and view.skips_base(seq):
                    continue
                mark = marked(seq)
                if view is not None and mark and view.base_mark_gone(seq):
                    mark = False
                yield seq, value, mark or (view is not None and seq in view.marks_add)

        if view is None:
            return base()
        extra = [
            (
                s,
                view.extra[s],
                s in view.marks_add
                or (view.base_visible and not view.base_mark_gone(s) and marked(s)),
            )
            for s in sorted(s for s in view.extra if s >= start_seq)
        ]
        if not view.base_visible:
            return iter(extra)
        return heapq.merge(base(), extra, key=lambda item: item[0])

    def _read_range(self, prefix: bytes, start_seq: int, limit: int, view: _View | None
                    ) -> list[tuple[int, bytes, bool]]:
        if limit <= 0:
            return []
        with self._map_lock, self._env.begin() as txn:
            out = []
            for item in self._items(txn, prefix, start_seq, view):
                out.append(item)
                if len(out) >= limit:
                    break
            return out

    def _scan(self, prefix: bytes, upto: list[int], keep: Callable[[bytes], bool],
              view: _View | None) -> tuple[int, int, int, int, list[int]]:
        first = n = size = last = 0
        dropped: list[int] = []
        # buffers=True: the records are looked at, never copied
        with self._map_lock, self._env.begin(buffers=True) as txn:
            for seq, record, _ in self._items(txn, prefix, 0, view, with_marks=False):
                if seq > upto[0]:
                    break
                last = seq
                if not keep(record):
                    dropped.append(seq)
                    continue
                if not n:
                    first = seq
                n += 1
                size += len(record)
        return first, n, size, last, dropped

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
                    while (not self._gens[0].nops or (self._held and not self._gens[0].sealed)
                           ) and not self._closing:
                        self._writer_idle = True
                        self._wake.wait()
                    self._writer_idle = False
                    gen = self._gens[0]
                    if not gen.nops:
                        break  # closing and drained
                    if not gen.sealed:
                        self._seal_open()
                    position = gen.position
                    hook = self._hook
                changelog = self.changelog
                if gen.local and position is not None and (changelog is not None
                                                          or hook is not None):
                    # encoded before the commit so the owner streams it to the replicas
                    # while its own fsync runs
                    self._call_on_loop(self._publish_record, position[1], position[0],
                                       records.encode(_changes_of(gen)))
                self._commit(gen, position)
                if position is not None:
                    self.position = position
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
                    # this node's own write, and it is no longer the owner: no replica may
                    # have it, nor the new owner's history; it is never confirmed (with no
                    # hook left, it would be, as a store without replicas confirms)
                    deposed = gen.local and self.replica
                self.stats["commits"] += 1
                self.stats["ops"] += gen.nops
                self.stats["last_batch_size"] = gen.nops
                if deposed:
                    if fut is not None:
                        self._call_on_loop(_reject, fut, StoreError(
                            f"message store at {self.path}: this node stopped owning the "
                            "vhost before the write was acknowledged by its replicas"))
                elif hook is not None and position is not None:
                    self._call_on_loop(hook.committed, position[1], fut)
                elif fut is not None:
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

    def _publish_record(self, offset: int, epoch: int, payload: bytes) -> None:
        changelog = self.changelog
        if changelog is not None:
            changelog.append(offset, epoch, payload)
        hook = self._hook
        if hook is not None:
            hook.record(offset, epoch, payload)

    def _commit(self, gen: _Generation, position: tuple[int, int] | None) -> None:
        """Commit ``gen``, growing the map as needed.  A disk that refuses the commit fails
        none of the store: the generation's new messages are shed (their flush future
        fails: publishers get basic.nack) and the rest (deletes, acks, marks) is retried,
        with the reserve given back to the disk if need be, until it commits."""
        attempt: _Generation | None = gen
        # an owner's generation keeps its offset even if all of it is shed: its record may
        # have been streamed already, and offsets never skip
        streamed = gen.local
        if (self.space.reserve.owed and self._can_shed(gen)
                and not self.space.room_for(gen.nbytes)):
            attempt = self._shed(gen, None, streamed)
        wait = space.RETRY_FIRST
        while attempt is not None:
            try:
                self._transact(attempt, position)
                self.space.after_commit()
                return
            except lmdb.MapFullError:
                # The transaction was aborted on the way out of `with`, so no transaction of
                # this thread is open; readers are kept out by _map_lock.
                with self._map_lock.exclusive():
                    new_size = self._env.info()["map_size"] * 2
                    self._env.set_mapsize(new_size)
                self.stats["map_resizes"] += 1
                log.info("message store %s: map grown to %d bytes", self.path, new_size)
            except lmdb.Error as exc:
                if not space.is_write_failure(exc):
                    raise
                self.space.failed(exc)
                if attempt is gen and self._can_shed(gen):
                    attempt = self._shed(gen, exc, streamed)
                elif self.space.release_reserve():
                    pass
                elif self._closing:
                    raise
                else:
                    time.sleep(wait)
                    wait = min(wait * 2, space.RETRY_MAX)

    def _transact(self, gen: _Generation, position: tuple[int, int] | None) -> None:
        with self._env.begin(write=True) as txn:
            self._apply(txn, gen)
            if position is not None:
                txn.put(_KEY_POSITION, msgpack.packb(position), db=self._meta)
            t0 = time.perf_counter()
            # __exit__ commits; with sync=True that is where both fsyncs happen.
        self.stats["fsync_seconds_total"] += time.perf_counter() - t0

    def _can_shed(self, gen: _Generation) -> bool:
        """Only the owner's own generations can lose their puts: a replica's record and a
        snapshot must be stored whole or not at all (they wait for space instead)."""
        return (gen.local and not gen.reset and not gen.raw
                and any(q.puts for q in gen.queues.values()))

    def _shed(self, gen: _Generation, exc: BaseException | None, streamed: bool
              ) -> _Generation | None:
        """``gen`` without its puts, or None when nothing else is left to commit (and its
        record was not ``streamed``); the flush future of ``gen`` fails (writer thread).  A
        streamed record's messages stay on the replicas: nacked there, not lost."""
        why = StoreError(f"message store at {self.path}: no space left for new messages"
                         + (f" ({exc})" if exc is not None else ""))
        shed = _Generation()
        shed.sealed = True
        shed.meta = gen.meta
        n = 0
        for name, q in gen.queues.items():
            n += len(q.puts)
            rest = q.copy()
            rest.puts = {}
            if rest.cleared or rest.ranges or rest.deletes or rest.delivered:
                shed.queues[name] = rest
        assert self._loop is not None
        dropped = {name: list(q.puts) for name, q in gen.queues.items() if q.puts}
        with self._lock:
            # reads stop showing the shed messages (rebound, not emptied: a read on another
            # thread may be walking the old dicts)
            for q in gen.queues.values():
                q.puts = {}
            if self.changelog is not None and dropped:
                # the record went to the replicas with these messages: the next record
                # deletes them there too, so that every copy stays the same
                comp = self._gens[-1]
                for name, seqs in dropped.items():
                    comp.ops_for(name).deletes.update(seqs)
                comp.nops += 1
            gen.nbytes = 0
            # a flush() of this generation from now on gets this same, failed, future
            if gen.future is None or gen.future.cancelled():
                gen.future = asyncio.Future(loop=self._loop)
            fut = gen.future
        self._call_on_loop(_reject_quietly, fut, why)
        self.stats["shed_puts"] += n
        if exc is None:
            self.space.failed(why)
        return shed if shed.queues or shed.meta or streamed else None

    def _apply(self, txn: lmdb.Transaction, gen: _Generation) -> None:
        if gen.reset:
            txn.drop(self._msgs, delete=False)
            txn.drop(self._delivered, delete=False)
        for key, value in gen.raw:
            if value is None:
                txn.put(key, b"", db=self._delivered)
            else:
                txn.put(key, value, db=self._msgs)
        for key, value in gen.meta.items():
            txn.put(key, value, db=self._meta)
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
            for lo, hi in q.ranges:
                end = prefix + hi.to_bytes(SEQ_BYTES, "big")
                for cur in (msgs, marks):
                    if cur.set_range(prefix + lo.to_bytes(SEQ_BYTES, "big")):
                        # keys of this queue sort before those of any other from here on
                        while bytes(cur.key()) < end and cur.delete():
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
