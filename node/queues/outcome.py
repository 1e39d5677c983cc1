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

    __slots__ = ("queues", "rejected", "flow", "store")

    def __init__(self, queues: list[Queue], rejected: bool, flow: Sequence[Queue],
                 store: Any) -> None:
        self.queues = queues
        self.rejected = rejected
        self.flow = flow
        # the vhost's store, set only when a queue wrote the message to it
        self.store = store

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
        return self.store.flush()

    def backlogged(self) -> bool:
        """The store holds more uncommitted bytes than its publishers may make it hold."""
        return self.store is not None and self.store.pending_bytes > STORE_PENDING_MAX_BYTES


NOWHERE = PublishOutcome([], False, (), None)


def publish_to(queues: list[Queue], message: Message, store: Any) -> PublishOutcome:
    """Enqueue ``message`` in each of ``queues`` (all of one vhost, whose store is
    ``store``)."""
    if not queues:
        return NOWHERE
    flow: Sequence[Queue] = ()
    rejected = durable = False
    for q in queues:
        r = q.publish(message)
        if r:
            if r & ACCEPTED_FLUSH:
                durable = True
            if r & REJECTED:
                rejected = True
            if r & FLOW:
                flow = [*flow, q]
    message._record = None  # the store has its copy; don't keep a second one in memory
    return PublishOutcome(queues, rejected, flow, store if durable else None)
