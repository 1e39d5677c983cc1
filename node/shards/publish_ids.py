"""Publishes sent again over a queue link are enqueued once.

A publish that was on its way to a shard's owner when the link to it broke may or may not
have reached it.  The sending node does not nack it (RabbitMQ's quorum queues do not
either): it sends it again, to the same node when it comes back or to the shard's new
owner after a failover or a move, marked as sent again.  Each publish that crosses a
link carries an id (`PID_BYTES`: the sending link's random nonce and its sequence
number) inside its store record, so the owner's replicas hold it too.  Every queue
remembers the ids of the last `RECENT` link publishes it took (`PublishIds`); a queue
object that is new on this node (this node just became the shard's owner) first reads
them from the tail of its stored messages.  A publish sent again to a queue that holds
its id is not enqueued twice: its confirm waits for that queue's store as a new one's
would.

What this does not cover: a message that was delivered and acked in the moment between
the new owner taking over and the publish coming again is gone from the store, and is
enqueued again (RabbitMQ's quorum queues deduplicate in the Raft log; WarrenMQ's
guarantee there is at-least-once, as a client's own retry after a nack would be).
Transient messages in a queue object new on this node are not in its store to be found.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from node.amqp.message import Message
from node.queues.outcome import all_settled, publish_to

log = logging.getLogger("warren.shards.publish_ids")

PID_BYTES = 16
# ids a queue remembers: more than one link's window of unanswered publishes (the most
# a sender can send again), with room for other senders' publishes interleaved
RECENT = 3 * 4096


class PublishIds:
    """The ids of the last `RECENT` link publishes a queue took."""

    __slots__ = ("_ids", "_order", "seeded")

    def __init__(self) -> None:
        self._ids: set[bytes] = set()
        self._order: deque[bytes] = deque()  # oldest first, for forgetting in O(1)
        self.seeded = False  # read from the store's tail already

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


def ids_of(q: Any) -> PublishIds:
    ids = q.publish_ids
    if ids is None:
        ids = q.publish_ids = PublishIds()
    return ids


def _seed(q: Any, ids: PublishIds) -> None:
    """Read the ids in the tail of ``q``'s stored messages (once per queue object): what
    the previous owner wrote and replicated before this node took the shard over."""
    ids.seeded = True
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
    log.debug("queue '%s' in vhost '%s': %d publish ids read from its store", q.name,
              q.vhost, found)


def publish_once(queues: list[Any], msg: Message, again: bool
                 ) -> tuple[bool, asyncio.Future[None] | None]:
    """Enqueue ``msg`` (come over a queue link, its ``pid`` set) in those of ``queues``
    that do not hold it yet (``again``: it is sent again, and may have come before).
    Returns (taken: no queue refused it, the future its confirm waits for or None)."""
    pid = msg.pid
    fresh = queues
    holding: list[Any] = []
    if again and pid is not None:
        fresh = []
        for q in queues:
            ids = ids_of(q)
            if not ids.seeded:
                _seed(q, ids)
            (holding if pid in ids else fresh).append(q)
    ok = True
    flushes: list[asyncio.Future] = []
    if fresh:
        outcome = publish_to(fresh, msg)
        ok = not outcome.rejected
        if outcome.durable:
            flushes.append(outcome.settled())
    if pid is not None:
        for q in fresh:
            ids_of(q).add(pid)
    for q in holding:  # confirmed once what it wrote then is on disk (and replicated)
        if q.store is not None and q.durable:
            flushes.append(q.store.flush())
    if not flushes:
        return ok, None
    if len(flushes) == 1:
        return ok, flushes[0]
    return ok, all_settled(flushes)
