"""A queue: its messages in order, its consumers, delivery and acknowledgement.

Ordering: every message gets a sequence number when it is enqueued.  Ready messages wait in
a deque; requeued ones (nack, reject, a closed channel) go to a heap keyed by their sequence
number, so they come back at their old place ahead of newer messages.

Paging: a queue (durable or not) holds at most `memory_limit` ready messages in memory.  Past
that, new messages are written only to the vhost's LMDB store and paged back in batches as the
in-memory part drains, so a backlog larger than memory stays on disk, not in the Python heap.
Every message past the in-memory part is newer than everything in memory, so paging never
reorders."""

from __future__ import annotations

import heapq
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterable

from node.message import Message
from node.queues.consumer import Consumer
from node.queues.entry import QueueEntry

if TYPE_CHECKING:
    from storage.store import MessageStore

PAGE_BATCH = 2000


class Queue:
    def __init__(self, vhost: str, name: str, *, durable: bool = False,
                 exclusive_owner: Any = None, auto_delete: bool = False,
                 arguments: dict | None = None, store: "MessageStore | None" = None,
                 memory_limit: int = 20000,
                 on_unused: Callable[["Queue"], None] | None = None) -> None:
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner  # the connection that owns an exclusive queue
        self.auto_delete = auto_delete
        self.arguments = arguments or {}
        self.store = store  # for persistence (durable queues) and paging (every queue)
        self.memory_limit = max(memory_limit, PAGE_BATCH)
        self.on_unused = on_unused
        self.consumers: deque[Consumer] = deque()
        self.exclusive_consumer: Consumer | None = None
        self.had_consumers = False
        self.deleted = False
        self._ready: deque[QueueEntry] = deque()
        self._requeued: list[QueueEntry] = []
        self._next_seq = 1
        self._paged_count = 0  # messages only in the store, all newer than _ready
        self._paged_from = 0  # sequence number of the oldest of them
        self._paged_bytes = 0
        self.ready_bytes = 0
        self.unacked = 0
        # counters for the management API and metrics
        self.stats_publish = 0
        self.stats_deliver = 0
        self.stats_ack = 0
        self.stats_redeliver = 0

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} in {self.vhost!r}>"

    # --- counts ----------------------------------------------------------------------
    @property
    def message_count(self) -> int:
        """Ready messages (what queue.declare-ok reports)."""
        return len(self._ready) + len(self._requeued) + self._paged_count

    @property
    def consumer_count(self) -> int:
        return len(self.consumers)

    # --- enqueue ---------------------------------------------------------------------
    def publish(self, message: Message) -> bool:
        """Enqueue; True when the publisher's confirm must wait for the store's flush."""
        seq = self._next_seq
        self._next_seq = seq + 1
        self.stats_publish += 1
        store = self.store
        if store is not None and (self._paged_count or len(self._ready) >= self.memory_limit):
            store.put(self.name, seq, message.encode())
            if not self._paged_count:
                self._paged_from = seq
            self._paged_count += 1
            self._paged_bytes += len(message.body)
            return message.persistent and self.durable
        entry = QueueEntry(seq, message)
        must_flush = False
        if store is not None and message.persistent and self.durable:
            store.put(self.name, seq, message.encode())
            entry.stored = True
            must_flush = True
        self._ready.append(entry)
        self.ready_bytes += len(message.body)
        if self.consumers:
            self.dispatch()
        return must_flush

    # --- dequeue ---------------------------------------------------------------------
    def _pop(self) -> QueueEntry | None:
        rq = self._requeued
        ready = self._ready
        if rq and (not ready or rq[0].seq < ready[0].seq):
            entry = heapq.heappop(rq)
        elif ready:
            entry = ready.popleft()
        elif self._paged_count:
            self._page_in()
            if not ready:
                return None
            entry = ready.popleft()
        else:
            return None
        self.ready_bytes -= len(entry.message.body)
        if self._paged_count and len(ready) < self.memory_limit // 2:
            self._page_in()
        return entry

    def _page_in(self) -> None:
        assert self.store is not None
        rows = self.store.read_range(self.name, self._paged_from, PAGE_BATCH)
        for seq, record, delivered in rows:
            msg = Message.decode(record)
            self._ready.append(QueueEntry(seq, msg, delivered, True))
            self.ready_bytes += len(msg.body)
            self._paged_bytes -= len(msg.body)
        if rows:
            self._paged_from = rows[-1][0] + 1
        self._paged_count = max(0, self._paged_count - len(rows))
        if not rows:  # store and counter disagree (should not happen): trust the store
            self._paged_count = 0
            self._paged_bytes = 0

    def get(self) -> QueueEntry | None:
        """basic.get: the next message, or None.  The caller acks it or hands it back."""
        entry = self._pop()
        if entry is not None:
            self.stats_deliver += 1
            if entry.redelivered:
                self.stats_redeliver += 1
        return entry

    def dispatch(self) -> None:
        consumers = self.consumers
        while consumers and (self._ready or self._requeued or self._paged_count):
            chosen = None
            for _ in range(len(consumers)):
                c = consumers[0]
                consumers.rotate(-1)
                if c.has_capacity() and c.owner.can_deliver(c):
                    chosen = c
                    break
            if chosen is None:
                return
            entry = self._pop()
            if entry is None:
                return
            self.stats_deliver += 1
            if entry.redelivered:
                self.stats_redeliver += 1
            if not chosen.no_ack:
                chosen.unacked += 1
                self.unacked += 1
                if entry.stored:
                    self.store.mark_delivered(self.name, entry.seq)  # type: ignore[union-attr]
            elif entry.stored:
                self.store.delete(self.name, entry.seq)  # type: ignore[union-attr]
            chosen.owner.deliver(chosen, self, entry)

    # --- settle ----------------------------------------------------------------------
    def taken(self, entry: QueueEntry) -> None:
        """An entry handed out by get() that now counts as unacknowledged."""
        self.unacked += 1
        if entry.stored:
            self.store.mark_delivered(self.name, entry.seq)  # type: ignore[union-attr]

    def ack(self, entry: QueueEntry, consumer: Consumer | None) -> None:
        self.unacked -= 1
        self.stats_ack += 1
        if consumer is not None:
            consumer.unacked -= 1
        if entry.stored and not self.deleted:
            self.store.delete(self.name, entry.seq)  # type: ignore[union-attr]

    def discard(self, entry: QueueEntry) -> None:
        """A message handed out with no-ack (basic.get no-ack): it is gone."""
        if entry.stored and not self.deleted:
            self.store.delete(self.name, entry.seq)  # type: ignore[union-attr]

    def requeue(self, entries: Iterable[tuple[QueueEntry, Consumer | None]]) -> None:
        for entry, consumer in entries:
            self.unacked -= 1
            if consumer is not None:
                consumer.unacked -= 1
            if self.deleted:
                continue
            entry.redelivered = True
            heapq.heappush(self._requeued, entry)
            self.ready_bytes += len(entry.message.body)
        if self.consumers and not self.deleted:
            self.dispatch()

    def purge(self) -> int:
        n = self.message_count
        store = self.store
        for entry in self._ready:
            if entry.stored:
                store.delete(self.name, entry.seq)  # type: ignore[union-attr]
        for entry in self._requeued:
            if entry.stored:
                store.delete(self.name, entry.seq)  # type: ignore[union-attr]
        while self._paged_count and store is not None:
            rows = store.read_range(self.name, self._paged_from, PAGE_BATCH)
            if not rows:
                break
            for seq, _record, _delivered in rows:
                store.delete(self.name, seq)
            self._paged_from = rows[-1][0] + 1
            self._paged_count -= len(rows)
        self._paged_count = 0
        self._paged_bytes = 0
        self._ready.clear()
        self._requeued.clear()
        self.ready_bytes = 0
        return n

    # --- consumers -------------------------------------------------------------------
    def add_consumer(self, consumer: Consumer) -> None:
        self.consumers.append(consumer)
        self.had_consumers = True
        if consumer.exclusive:
            self.exclusive_consumer = consumer
        self.dispatch()

    def remove_consumer(self, consumer: Consumer) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        if self.exclusive_consumer is consumer:
            self.exclusive_consumer = None
        if not self.consumers and self.auto_delete and self.on_unused is not None:
            self.on_unused(self)

    # --- recovery --------------------------------------------------------------------
    def recover(self) -> int:
        """Load this durable queue's messages from the store after a restart.  Transient
        messages that were paged to disk are dropped, as RabbitMQ drops them."""
        store = self.store
        if store is None or not self.durable:
            return 0
        start = 0
        while True:
            rows = store.read_range(self.name, start, 10000)
            if not rows:
                break
            for seq, record, delivered in rows:
                if not Message.record_is_persistent(record):
                    store.delete(self.name, seq)
                    continue
                if not self._paged_count and len(self._ready) < self.memory_limit:
                    msg = Message.decode(record)
                    self._ready.append(QueueEntry(seq, msg, delivered, True))
                    self.ready_bytes += len(msg.body)
                else:
                    if not self._paged_count:
                        self._paged_from = seq
                    self._paged_count += 1
            start = rows[-1][0] + 1
        self._next_seq = store.last_seq(self.name) + 1
        return self.message_count
