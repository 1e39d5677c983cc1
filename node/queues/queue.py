"""A queue: its messages in order, its consumers, delivery and acknowledgement, and the
RabbitMQ extensions that act on them (TTL, length limits, dead-lettering, priorities,
consumer priorities, single active consumer, queue expiry).

Ordering: every message gets a sequence number when it is enqueued; the ready list
(node/queues/ready.py) hands them out in that order, requeued ones back at their place.

Paging: a queue holds at most `memory_limit` ready messages in memory.  Past that, new
messages are written only to the vhost's LMDB store and paged back in batches as the
in-memory part drains, so a backlog larger than memory stays on disk, not in the Python heap.
Every message past the in-memory part is newer than everything in memory, so paging never
reorders.  Priority queues keep everything in memory (their order is not the store's).

The event loop serves every vhost of the node, so a queue never walks LMDB on it: the next
batch is read on the store's reader thread while the ready list still holds half its
bound (delivery finds it there), a purge deletes the paged part as one range delete on the
writer thread (its count is the queue's own), and recovery scans the store on the reader
thread; until the scan lands the queue is `recovering`, and what must answer with its
counts (declare-ok, get-ok, purge-ok) waits for it (`wait_for`).  Synchronous callers that
need the head while the next batch is still in flight (drop-head of a length limit, a bare
`get()`) read that one batch on the loop: bounded, and rare."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import os
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterable

from node.amqp.fields import Long
from node.amqp.message import FLAG_EXPIRATION, Message, now_ms
from node.queues.consumer import Consumer
from node.queues.entry import QueueEntry
from node.queues.ready import PriorityReadyList, ReadyList
from node.queues.settings import QueueSettings, queue_settings
from node.queues.types import QUORUM
from node.read_models import QueueStats
from storage.keys import MAX_QUEUE_NAME_BYTES, MAX_SEQ

if TYPE_CHECKING:
    from storage.store import MessageStore

log = logging.getLogger(__name__)

PAGE_BATCH = 2000
# flow control: with consumers attached, a publisher is paused while the queue holds more
# than FLOW_HIGH ready messages, and resumed below FLOW_LOW
FLOW_HIGH = 5000
FLOW_LOW = 2500

# publish() results; FLOW may be or'ed in: the queue asks its publisher to slow down;
# REMOTE: a queue another node owns (node/shards/remote_queue.py), which publish_to sends
# the message to over the owner's queue link
ACCEPTED, ACCEPTED_FLUSH, REJECTED, FLOW, REMOTE = 0, 1, 2, 4, 8

DeadLetter = Callable[["Queue", Message, str], None]


def new_declaration() -> str:
    """The id of a queue's declaration (durable ones: recorded in Raft with the queue)."""
    return os.urandom(8).hex()


def store_key(name: str, declaration: str) -> str:
    """Where a queue keeps its messages in the vhost's store: its name and the id of the
    declaration that created it, so that a queue deleted and declared again under the same
    name (its owner down, or failing over, when the delete was committed) never finds the
    old one's messages, and the old ones are recognisably orphans.  "" (queues declared
    before ids existed): the bare name, as they were stored.  A name too long to take the
    suffix is replaced by a digest (the store's key prefix holds at most 255 bytes)."""
    if not declaration:
        return name
    key = f"{name}\x00{declaration}"
    if len(key.encode()) > MAX_QUEUE_NAME_BYTES:
        key = f"\x00{hashlib.sha256(name.encode()).hexdigest()[:40]}\x00{declaration}"
    return key


class Queue:
    def __init__(self, vhost: str, name: str, *, durable: bool = False,
                 exclusive_owner: Any = None, auto_delete: bool = False,
                 arguments: dict | None = None, store: "MessageStore | None" = None,
                 memory_limit: int = 20000,
                 on_unused: Callable[["Queue"], None] | None = None,
                 dead_letter: DeadLetter | None = None,
                 policy: dict | None = None, declaration: str | None = None,
                 unit: str | None = None, in_raft: bool | None = None) -> None:
        self.vhost = vhost
        self.name = name
        # the placement unit that holds it: the vhost, or one of its shards (cluster/shards.py)
        self.unit = unit if unit is not None else vhost
        if declaration is None:
            # a queue Raft never sees (transient, exclusive) gets an id of its own, so its
            # paged messages are orphans once it is gone, swept at the next start or
            # takeover; a durable one without an id is stored under its bare name
            declaration = "" if durable and exclusive_owner is None else new_declaration()
        self.declaration = declaration
        self.store_key = store_key(name, self.declaration)
        self.durable = durable
        self.exclusive_owner = exclusive_owner  # the connection that owns an exclusive queue
        # its definition is in Raft: durable and not exclusive, or any queue of a sharded
        # vhost (every node routes there, so every node must know every queue)
        self.in_raft = durable and exclusive_owner is None if in_raft is None else in_raft
        self.auto_delete = auto_delete
        self.arguments = arguments or {}
        self.store = store  # for persistence (durable queues) and paging (every queue)
        self.on_unused = on_unused  # auto-delete and x-expires: the broker deletes us
        self.dead_letter_cb = dead_letter
        self.settings: QueueSettings = queue_settings(self.arguments, policy)
        self.policy_name: str | None = None
        prio = self.settings.max_priority
        self._ready: ReadyList | PriorityReadyList = (
            PriorityReadyList(prio) if prio else ReadyList())
        self.memory_limit = max(memory_limit, PAGE_BATCH) if not prio else 1 << 62
        self.consumers: deque[Consumer] = deque()
        self.exclusive_consumer: Consumer | None = None
        self.had_consumers = False
        self.deleted = False
        self._next_seq = 1
        self._paged_count = 0  # messages only in the store, all newer than _ready
        self._paged_from = 0  # sequence number of the oldest of them
        self._paged_bytes = 0
        self._paging: asyncio.Future | None = None  # the batch being read off the loop
        self._page_token = 0  # a read started before this changed is stale: dropped
        self._waiters: list[asyncio.Future[None]] = []  # wait_for() callers
        self.recovering = False  # the store is still being scanned (recover())
        # ids of link publishes, kept a while after one came again (node/shards/publish_ids.py)
        self.publish_ids: Any = None
        self._recovery_bound = [MAX_SEQ]  # the scan counts seqs up to this one
        self.ready_bytes = 0
        self.unacked = 0
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._expiry_at = 0
        self._unused_timer: asyncio.TimerHandle | None = None
        self._prioritised = False  # some consumer has x-priority != 0
        self.flow_blocked: set[Any] = set()  # publishing connections we paused
        # counters for the management API and metrics
        self.stats_publish = 0
        self.stats_deliver = 0
        self.stats_ack = 0
        self.stats_redeliver = 0
        self.stats_dead_lettered = 0
        self.touch()

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} in {self.vhost!r}>"

    # --- counts ----------------------------------------------------------------------
    @property
    def message_count(self) -> int:
        """Ready messages (what queue.declare-ok reports)."""
        return self._ready.n + self._paged_count

    @property
    def consumer_count(self) -> int:
        return len(self.consumers)

    @property
    def message_bytes(self) -> int:
        return self.ready_bytes + self._paged_bytes

    # --- settings (arguments + policy) ------------------------------------------------
    def apply_policy(self, policy_name: str | None, definition: dict | None) -> None:
        self.policy_name = policy_name
        old_prio = self.settings.max_priority
        self.settings = queue_settings(self.arguments, definition)
        self.settings.max_priority = old_prio  # fixed at declaration
        self._enforce_length()
        self._schedule_expiry()
        self.touch()

    # --- enqueue ---------------------------------------------------------------------
    def _expires_at(self, message: Message) -> int:
        ttl = self.settings.message_ttl
        if ttl is None and not message.flags & FLAG_EXPIRATION:
            return 0
        per_msg = message.expiration_ms
        if per_msg is not None:
            ttl = per_msg if ttl is None else min(ttl, per_msg)
        return 0 if ttl is None else message.published_at + ttl

    def publish(self, message: Message) -> int:
        """Enqueue: ACCEPTED, ACCEPTED_FLUSH (the confirm must wait for the store's flush)
        or REJECTED (a length limit with overflow reject-publish)."""
        s = self.settings
        if s.has_limit and s.overflow != "drop-head" and self._would_overflow(message):
            if s.overflow == "reject-publish-dlx":
                self._dead_letter(message, "maxlen")
            return REJECTED
        store = self.store
        if self.recovering and self._recovery_bound[0] == MAX_SEQ:
            # the first publish while the scan runs: number after what the store holds
            # (one seek), and tell the scan to stop there
            assert store is not None
            self._next_seq = max(self._next_seq, store.last_seq(self.store_key) + 1)
            self._recovery_bound[0] = self._next_seq - 1
        seq = self._next_seq
        self._next_seq = seq + 1
        self.stats_publish += 1
        result = ACCEPTED
        if store is not None and (self._paged_count or self.recovering
                                  or self._ready.n >= self.memory_limit):
            record = message.encode()
            store.put(self.store_key, seq, record)
            if not self._paged_count:
                self._paged_from = seq
            self._paged_count += 1
            self._paged_bytes += len(record)  # paged sizes are record sizes, everywhere
            result = ACCEPTED_FLUSH if self._keeps(message) else ACCEPTED
        else:
            entry = QueueEntry(seq, message, expires_at=self._expires_at(message))
            if store is not None and self._keeps(message):
                store.put(self.store_key, seq, message.encode())
                entry.stored = True
                result = ACCEPTED_FLUSH
            if self.consumers and not self._ready.n and not self._paged_count:
                # nothing waits ahead of it: straight to a consumer that can take it
                chosen = self._next_consumer()
                if chosen is not None:
                    self._deliver_to(chosen, entry)
                    return result
            self._ready.push(entry)
            self.ready_bytes += len(message.body)
            if entry.expires_at:
                # RabbitMQ (deliver_or_enqueue) runs drop_expired_msgs after a publish only
                # when the message is alone in the queue or drop-head dropped something,
                # and after the drop-head: a TTL-0 message that is over the length limit
                # dies as "maxlen", and one that a higher priority puts at the head of a
                # priority queue waits there for the next fetch
                if s.has_limit and s.overflow == "drop-head" and self._over_limit():
                    pass  # _enforce_length below drops, then expires what it uncovers
                elif self.message_count == 1:
                    self._drop_expired()
                elif not self._expiry_timer and self._ready.peek() is not entry:
                    self._schedule_expiry()
        if self.consumers:
            self.dispatch()
            if self._ready.n + self._paged_count > FLOW_HIGH:
                result |= FLOW
        if s.has_limit:
            self._enforce_length()
        return result

    def _keeps(self, message: Message) -> bool:
        """Stored to survive a restart: persistent messages of a durable queue, and every
        message of a quorum queue (RabbitMQ's quorum queues ignore delivery-mode)."""
        return self.durable and (message.persistent
                                 or self.settings.queue_type == QUORUM)

    def _would_overflow(self, message: Message) -> bool:
        s = self.settings
        if s.max_length is not None and self.message_count >= s.max_length:
            return True
        return (s.max_length_bytes is not None
                and self.message_bytes + len(message.body) > s.max_length_bytes)

    def _over_limit(self) -> bool:
        s = self.settings
        return bool(self.message_count) and (
            (s.max_length is not None and self.message_count > s.max_length)
            or (s.max_length_bytes is not None and self.message_bytes > s.max_length_bytes))

    def _enforce_length(self) -> None:
        """drop-head: the oldest ready messages go (and are dead-lettered) until we fit."""
        s = self.settings
        if not s.has_limit:
            return
        dropped = False
        while self._over_limit():
            entry = self._take_head()
            if entry is None:
                break
            self._drop(entry, "maxlen")
            dropped = True
        if dropped:
            # RabbitMQ (maybe_drop_head, then drop_expired_msgs): expired messages now at
            # the head die as "expired", before anything else can take the queue's place
            self._drop_expired()

    # --- dequeue ---------------------------------------------------------------------
    def _take_head(self, wait: bool = False) -> QueueEntry | None:
        """The next ready entry, expired or not.  When only paged messages are left:
        None with ``wait`` (the batch being read brings them), else the batch is read now."""
        ready = self._ready
        if not ready and self._paged_count and not self.recovering:
            if wait:
                self._want_page_in()
                return None
            self._page_in()
        entry = ready.pop()
        if entry is None:
            return None
        self.ready_bytes -= len(entry.message.body)
        self._want_page_in()
        return entry

    def _pop(self, wait: bool = False) -> QueueEntry | None:
        """The next live entry; expired ones met on the way are dead-lettered.  A priority
        queue hands out its head as RabbitMQ's fetch does, expired or not: its head is
        checked whenever it changes, except when a higher-priority message published
        behind others takes its place, and that one RabbitMQ delivers."""
        check = not self.settings.max_priority
        while True:
            entry = self._take_head(wait)
            if entry is None:
                return None
            if check and entry.expires_at and entry.expires_at <= now_ms():
                self._drop(entry, "expired")
                continue
            return entry

    def _want_page_in(self) -> None:
        """Read the next batch on the store's reader thread once the ready list is down to
        half its bound, so that it is there before the ready list runs dry."""
        if (not self._paged_count or self._paging is not None or self.recovering
                or self.deleted or len(self._ready) >= self.memory_limit // 2):
            return
        assert self.store is not None
        token = self._page_token
        fut = self._paging = self.store.read_range_async(self.store_key, self._paged_from,
                                                         PAGE_BATCH)
        fut.add_done_callback(lambda f: self._paged_in(f, token))

    def _paged_in(self, fut: asyncio.Future, token: int) -> None:
        if self._paging is fut:
            self._paging = None
        if fut.cancelled() or token != self._page_token or self.deleted:
            self._wake()
            return
        exc = fut.exception()
        if exc is not None:  # the store closed under us: the vhost is going away
            log.warning("queue '%s' in vhost '%s': page-in failed: %r", self.name, self.vhost,
                        exc)
            self._wake()
            return
        self._take_rows(fut.result())
        self._wake()
        if self.consumers:
            self.dispatch()
        self._want_page_in()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def wait_for(self) -> asyncio.Future[None] | None:
        """None when the queue can answer with its head and counts now; else a future that
        resolves once it can (it is recovering, or its next batch is being read)."""
        if not self.recovering:
            if self._ready or not self._paged_count or self.deleted:
                return None
            self._want_page_in()
            if self._paging is None:
                return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        return fut

    def _page_in(self) -> None:
        """Read the next batch now, on the loop (see the module's docstring for when)."""
        assert self.store is not None
        self._page_token += 1  # a batch in flight would now be a duplicate
        self._paging = None
        self._take_rows(self.store.read_range(self.store_key, self._paged_from, PAGE_BATCH))

    def _take_rows(self, rows: list[tuple[int, bytes, bool]]) -> None:
        """A batch read from the store: the next paged messages, in order."""
        if rows and rows[0][0] < self._paged_from:
            rows = [r for r in rows if r[0] >= self._paged_from]
        if len(rows) > self._paged_count:
            rows = rows[:self._paged_count]
        quorum = self.settings.queue_type == QUORUM
        for seq, record, delivered in rows:
            msg = Message.decode(record)
            entry = QueueEntry(seq, msg, delivered, True, self._expires_at(msg))
            if quorum and delivered:
                entry.acquired = _delivery_count(msg)
            self._ready.push(entry)
            self.ready_bytes += len(msg.body)
            self._paged_bytes -= len(record)
        if rows:
            self._paged_from = rows[-1][0] + 1
        self._paged_count = max(0, self._paged_count - len(rows))
        self._paged_bytes = max(0, self._paged_bytes)
        if not rows:  # store and counter disagree (should not happen): trust the store
            self._paged_count = 0
            self._paged_bytes = 0
        self._schedule_expiry()

    def get(self) -> QueueEntry | None:
        """basic.get: the next message, or None.  The caller acks it or hands it back."""
        self.touch()
        entry = self._pop()
        if entry is not None:
            self.stats_deliver += 1
            if entry.redelivered:
                self.stats_redeliver += 1
            # as RabbitMQ's fetch: the expired messages now at the head are dropped (and
            # dead-lettered) before get-ok reports message_count
            self._drop_expired()
        return entry

    def _next_consumer(self) -> Consumer | None:
        consumers = self.consumers
        if len(consumers) == 1 and not self.settings.single_active_consumer:
            c = consumers[0]
            return c if c.has_capacity() and c.owner.can_deliver(c) else None
        if self.settings.single_active_consumer:
            active = self._active_consumer()
            if active is not None and active.has_capacity() and active.owner.can_deliver(active):
                return active
            return None
        if self._prioritised:
            # highest priority first; round-robin among equals (rotating only within them)
            for prio in sorted({c.priority for c in consumers}, reverse=True):
                group = [c for c in consumers if c.priority == prio]
                for c in group:
                    if c.has_capacity() and c.owner.can_deliver(c):
                        consumers.remove(c)
                        consumers.append(c)
                        return c
            return None
        for _ in range(len(consumers)):
            c = consumers[0]
            consumers.rotate(-1)
            if c.has_capacity() and c.owner.can_deliver(c):
                return c
        return None

    def _active_consumer(self) -> Consumer | None:
        """Single active consumer: the earliest registered (highest priority first)."""
        if not self.consumers:
            return None
        if self._prioritised:
            return max(self.consumers, key=lambda c: c.priority)
        return self.consumers[0]

    def dispatch(self) -> None:
        while self.consumers and self._ready:
            chosen = self._next_consumer()
            if chosen is None:
                if self.flow_blocked and not any(c.has_capacity() for c in self.consumers):
                    # every consumer waits for its client's acks: holding publishers back
                    # gains nothing (a slow socket, by contrast, is worth waiting for)
                    self._release_flow()
                return
            entry = self._pop(wait=True)
            if entry is None:
                break
            self._deliver_to(chosen, entry)
        if not self._ready:
            self._want_page_in()
        if self.flow_blocked and self.message_count < FLOW_LOW:
            self._release_flow()

    def _deliver_to(self, chosen: Consumer, entry: QueueEntry) -> None:
        self.stats_deliver += 1
        if entry.redelivered:
            self.stats_redeliver += 1
        if not chosen.no_ack:
            chosen.unacked += 1
            self.unacked += 1
            if entry.stored:
                self.store.mark_delivered(self.store_key, entry.seq)  # type: ignore[union-attr]
        elif entry.stored:
            self.store.delete(self.store_key, entry.seq)  # type: ignore[union-attr]
        chosen.owner.deliver(chosen, self, entry)

    def _release_flow(self) -> None:
        blocked, self.flow_blocked = self.flow_blocked, set()
        for conn in blocked:
            conn.flow_resume(self)

    # --- settle ----------------------------------------------------------------------
    def taken(self, entry: QueueEntry) -> None:
        """An entry handed out by get() that now counts as unacknowledged."""
        self.unacked += 1
        if entry.stored:
            self.store.mark_delivered(self.store_key, entry.seq)  # type: ignore[union-attr]

    def ack(self, entry: QueueEntry, consumer: Consumer | None) -> None:
        self.unacked -= 1
        self.stats_ack += 1
        if consumer is not None:
            consumer.unacked -= 1
        if entry.stored and not self.deleted:
            self.store.delete(self.store_key, entry.seq)  # type: ignore[union-attr]

    def reject(self, entry: QueueEntry, consumer: Consumer | None) -> None:
        """basic.reject / basic.nack without requeue: gone, or dead-lettered."""
        self.unacked -= 1
        if consumer is not None:
            consumer.unacked -= 1
        if not self.deleted:
            self._drop(entry, "rejected")

    def discard(self, entry: QueueEntry) -> None:
        """A message handed out with no-ack (basic.get no-ack): it is gone."""
        if entry.stored and not self.deleted:
            self.store.delete(self.store_key, entry.seq)  # type: ignore[union-attr]

    def _drop(self, entry: QueueEntry, reason: str) -> None:
        if entry.stored:
            self.store.delete(self.store_key, entry.seq)  # type: ignore[union-attr]
        self._dead_letter(entry.plain or entry.message, reason)

    def _dead_letter(self, message: Message, reason: str) -> None:
        if self.settings.dead_letter_exchange is not None and self.dead_letter_cb is not None:
            self.stats_dead_lettered += 1
            self.dead_letter_cb(self, message, reason)

    def requeue(self, entries: Iterable[tuple[QueueEntry, Consumer | None]]) -> None:
        quorum = self.settings.queue_type == QUORUM
        for entry, consumer in entries:
            self.unacked -= 1
            if consumer is not None:
                consumer.unacked -= 1
            if self.deleted:
                continue
            if quorum and not self._returned(entry):
                continue
            entry.redelivered = True
            self._ready.requeue(entry)
            self.ready_bytes += len(entry.message.body)
        if self.deleted:
            return
        if self.consumers:
            self.dispatch()
        self._enforce_length()
        self._drop_expired()
        self._schedule_expiry()

    def _returned(self, entry: QueueEntry) -> bool:
        """A quorum queue counts every return of a message (rabbit_fifo's acquired_count:
        requeued by nack, reject, recover or a closed channel).  Past the delivery limit
        the message is dead-lettered with reason delivery_limit (dropped without a
        dead-letter exchange) and False is returned; else it carries the count as
        `x-delivery-count` from now on, in the store too, so the count survives a
        restart."""
        entry.acquired += 1
        limit = self.settings.delivery_limit
        if limit is not None and entry.acquired > limit:
            self._drop(entry, "delivery_limit")
            return False
        plain = entry.plain or entry.message
        entry.plain = plain
        entry.message = _with_delivery_count(plain, entry.acquired)
        if entry.stored:
            self.store.put(self.store_key, entry.seq, entry.message.encode())  # type: ignore[union-attr]
        return True

    def purge(self) -> int:
        """Drop every ready message (not the unacknowledged ones); their number.  The
        paged ones are every stored message of this queue from ``_paged_from`` on: one
        range delete, executed (and replicated) by the store's writer thread."""
        n = self.message_count
        store = self.store
        if store is not None:
            store.delete_many(self.store_key, [e.seq for e in self._ready if e.stored])
            if self._paged_count:
                store.purge_range(self.store_key, self._paged_from, self._next_seq)
        self._page_token += 1  # a batch in flight holds purged messages
        self._paging = None
        self._paged_from = self._next_seq
        self._paged_count = 0
        self._paged_bytes = 0
        self._ready.clear()
        self.ready_bytes = 0
        return n

    # --- message TTL: expire on time, even with nobody consuming ---------------------
    def _schedule_expiry(self) -> None:
        if self.deleted:
            return
        head = self._ready.peek()
        when = head.expires_at if head is not None else 0
        if when == self._expiry_at and self._expiry_timer is not None:
            return
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        self._expiry_at = when
        if when:
            loop = asyncio.get_event_loop()
            delay = max(0.0, (when - now_ms() + 1) / 1000)
            self._expiry_timer = loop.call_later(delay, self._expire)

    def _expire(self) -> None:
        self._expiry_timer = None
        self._expiry_at = 0
        if self.deleted:
            return
        self._drop_expired()
        self._schedule_expiry()

    def _drop_expired(self) -> None:
        """RabbitMQ's drop_expired_msgs: the expired messages at the head go, dead-lettered
        as "expired"; a live message at the head shields the expired ones behind it.  An
        entry has expired when now >= its expiry, so a TTL of 0 expires on arrival."""
        ready = self._ready
        head = ready.peek()
        if head is None:
            self._want_page_in()  # the batch's arrival schedules its expiry
            return
        if not head.expires_at:
            return
        now = now_ms()
        while head is not None and head.expires_at and head.expires_at <= now:
            entry = self._take_head()
            if entry is None:
                break
            self._drop(entry, "expired")
            head = ready.peek()
        if head is None:
            self._want_page_in()
        elif head.expires_at:
            self._schedule_expiry()

    # --- queue expiry (x-expires) ----------------------------------------------------
    def touch(self) -> None:
        """Used now (declared, consumed from, basic.get): restart the x-expires clock."""
        if self._unused_timer is not None:
            self._unused_timer.cancel()
            self._unused_timer = None
        exp = self.settings.expires
        if exp is None or self.deleted or self.consumers:
            return
        try:
            loop = asyncio.get_event_loop()
        except RuntimeError:
            return
        self._unused_timer = loop.call_later(exp / 1000, self._expired_unused)

    def _expired_unused(self) -> None:
        self._unused_timer = None
        if not self.consumers and not self.deleted and self.on_unused is not None:
            self.on_unused(self)

    # --- consumers -------------------------------------------------------------------
    def add_consumer(self, consumer: Consumer) -> None:
        self.consumers.append(consumer)
        self.had_consumers = True
        if consumer.priority:
            self._prioritised = True
        if consumer.exclusive:
            self.exclusive_consumer = consumer
        self.touch()
        self.dispatch()

    def remove_consumer(self, consumer: Consumer) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        if self.exclusive_consumer is consumer:
            self.exclusive_consumer = None
        self._prioritised = any(c.priority for c in self.consumers)
        if not self.consumers:
            if self.auto_delete and self.on_unused is not None:
                self.on_unused(self)
                return
            self.touch()
        elif self.settings.single_active_consumer:
            self.dispatch()  # the next consumer takes over

    def close(self) -> None:
        """The queue is deleted: stop its timers, let its publishers go."""
        self.deleted = True
        self.recovering = False
        self._wake()
        self._release_flow()
        for t in (self._expiry_timer, self._unused_timer):
            if t is not None:
                t.cancel()
        self._expiry_timer = self._unused_timer = None

    # --- recovery --------------------------------------------------------------------
    def recover(self) -> None:
        """Load this durable queue's messages from the store (after a restart, a failover,
        a move): the store is scanned on its reader thread; until that lands the queue is
        `recovering` and its stored messages wait on disk.  Then every one of them counts
        as paged and is read back in batches as it drains.  Transient messages that were
        paged to disk are dropped, as RabbitMQ drops them."""
        store = self.store
        if store is None or not self.durable:
            return
        self.recovering = True
        bound = self._recovery_bound
        fut = store.scan_async(self.store_key, bound,
                               _keep_all if self.settings.queue_type == QUORUM
                               else Message.record_is_persistent)
        fut.add_done_callback(self._scanned)

    def _scanned(self, fut: asyncio.Future) -> None:
        if self.deleted or not self.recovering:
            return
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            log.warning("queue '%s' in vhost '%s': recovery failed: %r", self.name, self.vhost,
                        exc)
            self.recovering = False
            self._wake()
            return
        first, n, size, last, dropped = fut.result()
        store = self.store
        assert store is not None
        store.delete_many(self.store_key, dropped)
        self._next_seq = max(self._next_seq, last + 1)
        if n:
            # older than whatever was published meanwhile (paged too: seqs past the bound)
            self._paged_from = first
            self._paged_count += n
            self._paged_bytes += size
            log.info("recovered %d messages in queue '%s' in vhost '%s'", n, self.name,
                     self.vhost)
        if self.settings.max_priority:
            self._load_all()  # its order is not the store's: everything in memory first
        else:
            self._recovered()

    def _load_all(self) -> None:
        """A recovering priority queue reads batch after batch (off the loop) until every
        stored message is in memory; then it is recovered."""
        if not self._paged_count or self.deleted:
            self._recovered()
            return
        assert self.store is not None
        fut = self.store.read_range_async(self.store_key, self._paged_from, PAGE_BATCH)

        def landed(f: asyncio.Future) -> None:
            if self.deleted:
                return
            if f.cancelled() or f.exception() is not None:
                log.warning("queue '%s' in vhost '%s': recovery failed: %r", self.name,
                            self.vhost, None if f.cancelled() else f.exception())
                self._recovered()
                return
            self._take_rows(f.result())
            self._load_all()
        fut.add_done_callback(landed)

    def _recovered(self) -> None:
        self.recovering = False
        self._wake()
        self._want_page_in()
        if self.consumers:
            self.dispatch()
        self._enforce_length()

    # --- read model (management API, metrics) ---
    def stats(self) -> QueueStats:
        """The queue's figures now (node/read_models.py); computed here, never per message."""
        head = self._ready.peek()
        ts = head.message.properties.timestamp if head is not None else None
        return QueueStats(
            messages_ready=self.message_count, messages_unacknowledged=self.unacked,
            messages_ready_ram=self._ready.n, messages_paged_out=self._paged_count,
            message_bytes_ready_ram=self.ready_bytes,
            message_bytes_paged_out=self._paged_bytes,
            consumers=tuple(self.consumers), exclusive_consumer=self.exclusive_consumer,
            single_active_consumer=(self._active_consumer()
                                    if self.settings.single_active_consumer else None),
            head_message_timestamp=int(ts) if ts is not None else None)


def _with_delivery_count(message: Message, count: int) -> Message:
    """The message with header `x-delivery-count` (a long, as RabbitMQ writes it), keeping
    the time it was published (its TTL still counts from then)."""
    props = copy.copy(message.properties)
    props.headers = {**(props.headers or {}), "x-delivery-count": Long(count)}
    counted = message.with_properties(props)
    counted.published_at = message.published_at
    counted.persistent = message.persistent
    return counted


def _delivery_count(message: Message) -> int:
    v = message.headers.get("x-delivery-count")
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0


def _keep_all(record: bytes) -> bool:
    return True
