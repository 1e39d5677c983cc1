"""A queue: its messages in order, its consumers, delivery and acknowledgement, and the
RabbitMQ extensions that act on them (TTL, length limits, dead-lettering, priorities,
consumer priorities, single active consumer, queue expiry).

Ordering: every message gets a sequence number when it is enqueued; the ready list
(node/queues/ready.py) hands them out in that order, requeued ones back at their place.

Paging: a queue holds at most `memory_limit` ready messages in memory.  Past that, new
messages are written only to the vhost's LMDB store and paged back in batches as the
in-memory part drains, so a backlog larger than memory stays on disk, not in the Python heap.
Every message past the in-memory part is newer than everything in memory, so paging never
reorders.  Priority queues keep everything in memory (their order is not the store's)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterable

from node.message import FLAG_EXPIRATION, Message, now_ms
from node.queues.consumer import Consumer
from node.queues.entry import QueueEntry
from node.queues.ready import PriorityReadyList, ReadyList
from node.queues.settings import QueueSettings, queue_settings
from node.read_models import QueueStats

if TYPE_CHECKING:
    from storage.store import MessageStore

PAGE_BATCH = 2000
# flow control: with consumers attached, a publisher is paused while the queue holds more
# than FLOW_HIGH ready messages, and resumed below FLOW_LOW
FLOW_HIGH = 5000
FLOW_LOW = 2500

# publish() results; FLOW may be or'ed in: the queue asks its publisher to slow down
ACCEPTED, ACCEPTED_FLUSH, REJECTED, FLOW = 0, 1, 2, 4

DeadLetter = Callable[["Queue", Message, str], None]


class Queue:
    def __init__(self, vhost: str, name: str, *, durable: bool = False,
                 exclusive_owner: Any = None, auto_delete: bool = False,
                 arguments: dict | None = None, store: "MessageStore | None" = None,
                 memory_limit: int = 20000,
                 on_unused: Callable[["Queue"], None] | None = None,
                 dead_letter: DeadLetter | None = None,
                 policy: dict | None = None) -> None:
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner  # the connection that owns an exclusive queue
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
        seq = self._next_seq
        self._next_seq = seq + 1
        self.stats_publish += 1
        store = self.store
        result = ACCEPTED
        if store is not None and (self._paged_count or self._ready.n >= self.memory_limit):
            record = message.encode()
            store.put(self.name, seq, record)
            if not self._paged_count:
                self._paged_from = seq
            self._paged_count += 1
            self._paged_bytes += len(record)  # paged sizes are record sizes, everywhere
            result = ACCEPTED_FLUSH if message.persistent and self.durable else ACCEPTED
        else:
            entry = QueueEntry(seq, message, expires_at=self._expires_at(message))
            if store is not None and message.persistent and self.durable:
                store.put(self.name, seq, message.encode())
                entry.stored = True
                result = ACCEPTED_FLUSH
            if self.consumers and not self._ready.n and not self._paged_count:
                # nothing waits ahead of it: straight to a consumer that can take it
                chosen = self._next_consumer()
                if chosen is not None:
                    self._hand_over(chosen, entry)
                    return result
            self._ready.push(entry)
            self.ready_bytes += len(message.body)
            if entry.expires_at:
                if self._ready.peek() is entry:
                    # at the head, so it expires now if its TTL has run out, as with TTL 0
                    # (RabbitMQ: drop_expired_msgs after a publish that became the head)
                    self._drop_expired()
                elif not self._expiry_timer:
                    self._schedule_expiry()
        if self.consumers:
            self.dispatch()
            if self._ready.n + self._paged_count > FLOW_HIGH:
                result |= FLOW
        if s.has_limit:
            self._enforce_length()
        return result

    def _would_overflow(self, message: Message) -> bool:
        s = self.settings
        if s.max_length is not None and self.message_count >= s.max_length:
            return True
        return (s.max_length_bytes is not None
                and self.message_bytes + len(message.body) > s.max_length_bytes)

    def _enforce_length(self) -> None:
        """drop-head: the oldest ready messages go (and are dead-lettered) until we fit."""
        s = self.settings
        if not s.has_limit:
            return
        dropped = False
        while self.message_count and (
                (s.max_length is not None and self.message_count > s.max_length)
                or (s.max_length_bytes is not None and self.message_bytes > s.max_length_bytes)):
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
    def _take_head(self) -> QueueEntry | None:
        """The next ready entry, expired or not."""
        ready = self._ready
        if not ready and self._paged_count:
            self._page_in()
        entry = ready.pop()
        if entry is None:
            return None
        self.ready_bytes -= len(entry.message.body)
        if self._paged_count and len(ready) < self.memory_limit // 2:
            self._page_in()
        return entry

    def _pop(self) -> QueueEntry | None:
        """The next live entry; expired ones met on the way are dead-lettered."""
        while True:
            entry = self._take_head()
            if entry is None:
                return None
            if entry.expires_at and entry.expires_at <= now_ms():
                self._drop(entry, "expired")
                continue
            return entry

    def _page_in(self) -> None:
        assert self.store is not None
        rows = self.store.read_range(self.name, self._paged_from, PAGE_BATCH)
        for seq, record, delivered in rows:
            msg = Message.decode(record)
            self._ready.push(QueueEntry(seq, msg, delivered, True, self._expires_at(msg)))
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
        while self.consumers and (self._ready or self._paged_count):
            chosen = self._next_consumer()
            if chosen is None:
                if self.flow_blocked and not any(c.has_capacity() for c in self.consumers):
                    # every consumer waits for its client's acks: holding publishers back
                    # gains nothing (a slow socket, by contrast, is worth waiting for)
                    self._release_flow()
                return
            entry = self._pop()
            if entry is None:
                break
            self._hand_over(chosen, entry)
        if self.flow_blocked and self.message_count < FLOW_LOW:
            self._release_flow()

    def _hand_over(self, chosen: Consumer, entry: QueueEntry) -> None:
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

    def _release_flow(self) -> None:
        blocked, self.flow_blocked = self.flow_blocked, set()
        for conn in blocked:
            conn.flow_resume(self)

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
            self.store.delete(self.name, entry.seq)  # type: ignore[union-attr]

    def _drop(self, entry: QueueEntry, reason: str) -> None:
        if entry.stored:
            self.store.delete(self.name, entry.seq)  # type: ignore[union-attr]
        self._dead_letter(entry.message, reason)

    def _dead_letter(self, message: Message, reason: str) -> None:
        if self.settings.dead_letter_exchange is not None and self.dead_letter_cb is not None:
            self.stats_dead_lettered += 1
            self.dead_letter_cb(self, message, reason)

    def requeue(self, entries: Iterable[tuple[QueueEntry, Consumer | None]]) -> None:
        for entry, consumer in entries:
            self.unacked -= 1
            if consumer is not None:
                consumer.unacked -= 1
            if self.deleted:
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

    def purge(self) -> int:
        n = self.message_count
        store = self.store
        for entry in self._ready:
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
        if head is None and self._paged_count:
            self._page_in()
            head = ready.peek()
        if head is None or not head.expires_at:
            return
        now = now_ms()
        while head is not None and head.expires_at and head.expires_at <= now:
            entry = self._take_head()
            if entry is None:
                break
            self._drop(entry, "expired")
            head = ready.peek()
            if head is None and self._paged_count:
                self._page_in()
                head = ready.peek()
        if head is not None and head.expires_at:
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
        self._release_flow()
        for t in (self._expiry_timer, self._unused_timer):
            if t is not None:
                t.cancel()
        self._expiry_timer = self._unused_timer = None

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
                    self._ready.push(QueueEntry(seq, msg, delivered, True,
                                                self._expires_at(msg)))
                    self.ready_bytes += len(msg.body)
                else:
                    if not self._paged_count:
                        self._paged_from = seq
                    self._paged_count += 1
                    self._paged_bytes += len(record)
            start = rows[-1][0] + 1
        self._next_seq = store.last_seq(self.name) + 1
        self._schedule_expiry()
        return self.message_count

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
