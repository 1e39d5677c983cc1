"""Publishes sent again over a queue link are enqueued once.

A publish that was on its way to a shard's owner when the link to it broke may or may not
have reached it.  The sending node does not nack it (RabbitMQ's quorum queues do not
either): it sends it again, to the same node when it comes back or to the shard's new
owner after a failover or a move, marked as sent again.  Each publish that crosses a
link carries an id (`PID_BYTES`: the sending link's random nonce and its sequence
number) inside its store record, so the owner's replicas hold it too.  When a publish
comes again, its queue reads the ids in the tail of its stored messages (the last
`RECENT`, writes not yet committed included: one bounded read, on the loop, only then)
and keeps them with the ids of the link publishes it takes after (`PublishIds`) for
`KEEP` seconds, while the rest of what was in flight comes again.  A publish sent again
to a queue that holds its id is not enqueued twice: its confirm waits for that queue's
store as a new one's would.  No queue keeps ids when no publish comes again, so this
costs no memory in the normal run.

What this does not cover (at-least-once there, as a client's own retry after a nack
would be; RabbitMQ's quorum queues deduplicate in the Raft log): a message delivered and
acked before its publish comes again is gone from the store, and is enqueued again; and
transient messages, and those of a non-durable queue, are in no store to be found.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from node.amqp.message import Message
from node.queues.outcome import all_settled, publish_to

log = logging.getLogger("warren.shards.publish_ids")

PID_BYTES = 16
# ids a queue reads and remembers: more than one link's window of unanswered publishes
# (the most a sender can send again), with room for other senders' publishes interleaved
RECENT = 3 * 4096
# how long a queue keeps them after the last publish that came again
KEEP = 30.0


class PublishIds:
    """The ids of the last `RECENT` link publishes a queue took."""

    __slots__ = ("_ids", "_order", "until")

    def __init__(self, until: float) -> None:
        self._ids: set[bytes] = set()
        self._order: deque[bytes] = deque()  # oldest first, for forgetting in O(1)
        self.until = until  # kept until then (`KEEP` after the last publish sent again)

    def add(self, pid: bytes) -> None:
        if pid in self._ids:
            return
        self._ids.add(pid)
        self._order.append(pid)
        if len(self._order) > RECENT:
            self._ids.discard(self._order.popleft())

    def __contains__(self, pid: bytes) -> bool:
        return pid in self._ids

    def __len__(self) -> int:
        return len(self._ids)


def _ids_for_again(q: Any, now: float) -> PublishIds:
    """``q``'s ids, read from the tail of its store when it keeps none now."""
    ids = _kept(q, now)
    if ids is None:
        ids = q.publish_ids = PublishIds(now + KEEP)
        _seed(q, ids)
        asyncio.get_event_loop().call_later(KEEP, _expire, q)
    ids.until = now + KEEP
    return ids


def _kept(q: Any, now: float) -> PublishIds | None:
    ids = q.publish_ids
    if ids is not None and ids.until < now:
        q.publish_ids = ids = None  # nothing came again for KEEP: forgotten
    return ids


def _expire(q: Any) -> None:
    """Forget ``q``'s ids once nothing came again for KEEP (an idle queue holds none)."""
    ids = q.publish_ids
    if ids is None:
        return
    left = ids.until - time.monotonic()
    if left <= 0:
        q.publish_ids = None
    else:
        asyncio.get_event_loop().call_later(left, _expire, q)


def _seed(q: Any, ids: PublishIds) -> None:
    """Read the ids in the tail of ``q``'s stored messages: what this node or the previous
    owner (which replicated it) wrote."""
    store = q.store
    if store is None or not q.durable:
        return
    last = store.last_seq(q.store_key)
    if not last:
        return
    found = 0
    for _seq, record, _delivered in store.read_range(q.store_key, max(last - RECENT, 0),
                                                     RECENT + 1):
        try:
            pid = Message.record_pid(record)
        except Exception:  # a record this code cannot read carries no id for it
            continue
        if pid is not None:
            ids.add(pid)
            found += 1
    log.info("queue '%s' in vhost '%s': publishes come again over a queue link; %d publish "
             "ids read from its store, so that none is enqueued twice", q.name, q.vhost, found)


def publish_once(queues: list[Any], msg: Message, again: bool
                 ) -> tuple[bool, asyncio.Future[None] | None]:
    """Enqueue ``msg`` (come over a queue link, its ``pid`` set) in those of ``queues``
    that do not hold it yet (``again``: it is sent again, and may have come before).
    Returns (taken: no queue refused it, the future its confirm waits for or None)."""
    pid = msg.pid
    fresh = queues
    holding: list[Any] = []
    if pid is not None and (again or any(q.publish_ids is not None for q in queues)):
        # sent again, or to a queue that keeps ids now: a copy passed on by a node that is
        # no longer the owner may come after the sender's own resend, unmarked
        fresh = []
        now = time.monotonic()
        for q in queues:
            ids = _ids_for_again(q, now) if again else _kept(q, now)
            (holding if ids is not None and pid in ids else fresh).append(q)
    ok = True
    flushes: list[asyncio.Future] = []
    if fresh:
        outcome = publish_to(fresh, msg)
        ok = not outcome.rejected
        if outcome.durable:
            flushes.append(outcome.settled())
    if pid is not None:
        for q in fresh:  # only queues that keep ids now (a publish came again lately)
            ids = q.publish_ids
            if ids is not None:
                ids.add(pid)
    for q in holding:  # confirmed once what it wrote then is on disk (and replicated)
        if q.store is not None and q.durable:
            flushes.append(q.store.flush())
    if not flushes:
        return ok, None
    if len(flushes) == 1:
        return ok, flushes[0]
    return ok, all_settled(flushes)
