"""What publishing one message into the queues it was routed to came to: the one place
that reads the flags `Queue.publish` returns, for every way a message arrives (a channel's
basic.publish, the management API's publish, dead-lettering)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from node.amqp.message import Message
from node.queues.queue import ACCEPTED_FLUSH, FLOW, REJECTED, Queue

# Record bytes a vhost's store may hold uncommitted before its publishers are no longer
# read (a disk slower than they are must not grow this without bound).
STORE_PENDING_MAX_BYTES = 64 << 20


class PublishOutcome:
    """The queues a message reached, whether one of them refused it (a length limit's
    reject-publish: a confirm is a nack), which asked its publisher to slow down (flow
    control), and, when a durable write happened, the future of its being on disk."""

    __slots__ = ("queues", "rejected", "flow", "store", "more_stores")

    def __init__(self, queues: list[Queue], rejected: bool, flow: Sequence[Queue],
                 store: Any, more_stores: tuple = ()) -> None:
        self.queues = queues
        self.rejected = rejected
        self.flow = flow
        # the store a queue wrote the message to (None: no durable write), and the others
        # when queues of several shards of a sharded vhost did
        self.store = store
        self.more_stores = more_stores

    @property
    def routed(self) -> bool:
        return bool(self.queues)

    @property
    def durable(self) -> bool:
        """A queue stored the message: a confirm waits for `settled()`."""
        return self.store is not None

    def settled(self) -> asyncio.Future[None]:
        """Resolves once the message is on disk here and on the in-sync replicas (the
        store's shared flush future: do not cancel it); fails if it never will be."""
        assert self.store is not None, "nothing durable was written"
        if not self.more_stores:
            return self.store.flush()
        return all_settled([self.store.flush(), *(s.flush() for s in self.more_stores)])

    def backlogged(self) -> bool:
        """A store holds more uncommitted bytes than its publishers may make it hold."""
        return self.store is not None and any(
            s.pending_bytes > STORE_PENDING_MAX_BYTES for s in (self.store, *self.more_stores))


def all_settled(futures: list[asyncio.Future]) -> asyncio.Future[None]:
    """A future of all of ``futures`` (shared ones: never cancelled through it, as
    asyncio.gather would), failing with the first failure."""
    out: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    left = [len(futures)]

    def one_done(fut: asyncio.Future) -> None:
        if out.done():
            return
        exc: BaseException | None = (asyncio.CancelledError() if fut.cancelled()
                                     else fut.exception())
        if exc is not None:
            out.set_exception(exc)
            return
        left[0] -= 1
        if not left[0]:
            out.set_result(None)
    for fut in futures:
        fut.add_done_callback(one_done)
    return out


NOWHERE = PublishOutcome([], False, (), None)


def publish_to(queues: list[Queue], message: Message) -> PublishOutcome:
    """Enqueue ``message`` in each of ``queues`` (all of one vhost, whose store is
    ``store``)."""
    if not queues:
        return NOWHERE
    flow: Sequence[Queue] = ()
    rejected = False
    store: Any = None
    more: tuple = ()
    for q in queues:
        r = q.publish(message)
        if r:
            if r & ACCEPTED_FLUSH:
                # the queue's own store: a sharded vhost's queues write to their shard's
                if store is None:
                    store = q.store
                elif q.store is not store and q.store not in more:
                    more = (*more, q.store)
            if r & REJECTED:
                rejected = True
            if r & FLOW:
                flow = [*flow, q]
    message._record = None  # the store has its copy; don't keep a second one in memory
    return PublishOutcome(queues, rejected, flow, store, more)
