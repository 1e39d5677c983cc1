"""What publishing one message into the queues it was routed to came to: the one place
that reads the flags `Queue.publish` returns, for every way a message arrives (a channel's
basic.publish, the management API's publish, dead-lettering, a queue link's publish).

A confirm waits for every place the message was written durably: the store of each local
queue that kept it (queues of several shards write to several stores) and, for a queue
another node owns (a `RemoteQueue`, node/shards/), that node's answer over the queue link;
a refusal from any is a nack.  The common case (one store, nothing remote) allocates
nothing beyond the outcome itself."""

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

    __slots__ = ("queues", "rejected", "flow", "store", "more_stores", "remote")

    def __init__(self, queues: list[Queue], rejected: bool, flow: Sequence[Queue],
                 store: Any, more_stores: tuple = (),
                 remote: list[tuple[Any, asyncio.Future[bool]]] | None = None) -> None:
        self.queues = queues
        self.rejected = rejected
        self.flow = flow
        # the store a queue wrote the message to (None: no local durable write), and the
        # others when queues of several shards of a sharded vhost did
        self.store = store
        self.more_stores = more_stores
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
        if self.remote is None and not self.more_stores:
            assert self.store is not None, "nothing durable was written"
            return self.store.flush()
        flushes = [] if self.store is None else [self.store.flush()]
        flushes.extend(s.flush() for s in self.more_stores)
        return all_settled(flushes, [answer for _link, answer in self.remote or ()])

    def backlogged(self) -> bool:
        """A store holds more uncommitted bytes than its publishers may make it hold."""
        store = self.store
        if store is None:
            return False
        return store.pending_bytes > STORE_PENDING_MAX_BYTES or any(
            s.pending_bytes > STORE_PENDING_MAX_BYTES for s in self.more_stores)


def all_settled(futures: list[asyncio.Future],
                answers: Sequence[asyncio.Future[bool]] = ()) -> asyncio.Future[None]:
    """A future of all of ``futures`` (shared ones: never cancelled through it, as
    asyncio.gather would) and ``answers`` (remote owners': True or False), failing with
    the first failure (`Rejected` for a False answer)."""
    out: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    left = [len(futures) + len(answers)]

    def one_done(fut: asyncio.Future) -> None:
        if out.done():
            if not fut.cancelled():
                fut.exception()  # read: a failure after the first is not "never retrieved"
            return
        exc: BaseException | None = (asyncio.CancelledError() if fut.cancelled()
                                     else fut.exception())
        if exc is None and fut.result() is False:
            exc = Rejected("a queue's owner did not take the message")
        if exc is not None:
            out.set_exception(exc)
            return
        left[0] -= 1
        if not left[0]:
            out.set_result(None)
    for fut in (*futures, *answers):
        fut.add_done_callback(one_done)
    return out


NOWHERE = PublishOutcome([], False, (), None)


def publish_to(queues: list[Queue], message: Message) -> PublishOutcome:
    """Enqueue ``message`` in each of ``queues`` (all of one vhost): each local queue
    writes to its own shard's store; the queues other nodes own get it over their links,
    one publish per owner node."""
    if not queues:
        return NOWHERE
    flow: Sequence[Queue] = ()
    rejected = False
    store: Any = None
    more: tuple = ()
    remote: list[Any] | None = None
    for q in queues:
        r = q.publish(message)
        if r:
            if r & ACCEPTED_FLUSH:
                if store is None:
                    store = q.store
                elif q.store is not store and q.store not in more:
                    more = (*more, q.store)
            if r & REJECTED:
                rejected = True
            if r & FLOW:
                flow = [*flow, q]
            if r & REMOTE:
                remote = [q] if remote is None else [*remote, q]
    if remote is None:
        message._record = None  # the store has its copy; don't keep a second one in memory
        return PublishOutcome(queues, rejected, flow, store, more)
    sent = type(remote[0]).send(remote, message)
    message._record = None
    return PublishOutcome(queues, rejected, flow, store, more, sent)
