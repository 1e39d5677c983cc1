"""What publishing one message into the queues it was routed to came to: the one place
that reads the flags `Queue.publish` returns, for every way a message arrives (a channel's
basic.publish, the management API's publish, dead-lettering, a queue link's publish).

A confirm waits for every place the message was written durably: the store of each local
queue that kept it and, for a queue another node owns (a `RemoteQueue`, node/shards/), that
node's answer over the queue link; a refusal from any is a nack.  The common case (one
store, nothing remote) allocates nothing beyond the outcome itself."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from node.amqp.message import Message
from node.queues.queue import ACCEPTED_FLUSH, FLOW, REJECTED, REMOTE, Queue

# Record bytes a vhost's store may hold uncommitted before its publishers are no longer
# read (a disk slower than they are must not grow this without bound).
STORE_PENDING_MAX_BYTES = 64 << 20


class Rejected(Exception):
    """A queue's owner did not take the message (a confirm is a nack)."""


class PublishOutcome:
    """The queues a message reached, whether one of them refused it (a length limit's
    reject-publish: a confirm is a nack), which asked its publisher to slow down (flow
    control), and, when a durable write happened, what its being settled waits for."""

    __slots__ = ("queues", "rejected", "flow", "store", "stores", "remote")

    def __init__(self, queues: list[Queue], rejected: bool, flow: Sequence[Queue],
                 store: Any, stores: list[Any] | None = None,
                 remote: list[tuple[Any, asyncio.Future[bool]]] | None = None) -> None:
        self.queues = queues
        self.rejected = rejected
        self.flow = flow
        # the store of the first queue that wrote the message; None: no local durable write
        self.store = store
        # other local stores that wrote it (queues of several shards owned here)
        self.stores = stores
        # (link, answer) per owner node of the remote queues it went to: the answer is
        # True once that node holds it durably, False when it did not take it
        self.remote = remote

    @property
    def routed(self) -> bool:
        return bool(self.queues)

    @property
    def durable(self) -> bool:
        """A confirm waits for `settled()`."""
        return self.store is not None or self.remote is not None

    def settled(self) -> asyncio.Future[None]:
        """Resolves once the message is on disk here and on the in-sync replicas (the
        store's shared flush future: do not cancel it) and on every remote owner; fails
        if it never will be (`Rejected` when an owner refused it)."""
        if self.stores is None and self.remote is None:
            assert self.store is not None, "nothing durable was written"
            return self.store.flush()
        waits: list[asyncio.Future] = [s.flush() for s in self.stores or ()]
        if self.store is not None:
            waits.append(self.store.flush())
        return _all_settled(waits, [fut for _link, fut in self.remote or ()])

    def backlogged(self) -> bool:
        """The store holds more uncommitted bytes than its publishers may make it hold."""
        return self.store is not None and self.store.pending_bytes > STORE_PENDING_MAX_BYTES


def _all_settled(flushes: list[asyncio.Future], answers: list[asyncio.Future[bool]]
                 ) -> asyncio.Future[None]:
    """One future for several: done when all are, failed as soon as one fails (or an
    answer is False)."""
    out: asyncio.Future[None] = asyncio.get_event_loop().create_future()
    left = [len(flushes) + len(answers)]

    def one(f: asyncio.Future) -> None:
        if out.done():
            if not f.cancelled():
                f.exception()  # read: a failure after the first is not "never retrieved"
            return
        if f.cancelled():
            out.set_exception(Rejected("the durable write was cancelled"))
            return
        exc = f.exception()
        if exc is not None:
            out.set_exception(exc)
        elif f.result() is False:
            out.set_exception(Rejected("a queue's owner did not take the message"))
        else:
            left[0] -= 1
            if not left[0]:
                out.set_result(None)
    for f in (*flushes, *answers):
        f.add_done_callback(one)
    return out


NOWHERE = PublishOutcome([], False, (), None)


def publish_to(queues: list[Queue], message: Message, store: Any = None) -> PublishOutcome:
    """Enqueue ``message`` in each of ``queues`` (all of one vhost).  Each queue writes to
    its own store (``store``, the vhost's, is what they all had before vhosts had shards:
    no longer read)."""
    if not queues:
        return NOWHERE
    flow: Sequence[Queue] = ()
    rejected = False
    first: Any = None
    stores: list[Any] | None = None
    remote: list[Any] | None = None
    for q in queues:
        r = q.publish(message)
        if r:
            if r & ACCEPTED_FLUSH:
                s = q.store
                if first is None:
                    first = s
                elif s is not first and (stores is None or s not in stores):
                    stores = [s] if stores is None else [*stores, s]
            if r & REJECTED:
                rejected = True
            if r & FLOW:
                flow = [*flow, q]
            if r & REMOTE:
                remote = [q] if remote is None else [*remote, q]
    # the queues other nodes own get it over their links, one publish per owner
    sent = type(remote[0]).send(remote, message) if remote is not None else None
    message._record = None  # the store has its copy; don't keep a second one in memory
    return PublishOutcome(queues, rejected, flow, first, stores, sent)
