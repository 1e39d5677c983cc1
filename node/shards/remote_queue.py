"""A queue of a shard another node owns, as this node's channels see it.

`RemoteQueue` stands in `VirtualHost.queues` where a `Queue` would be: routing reaches it
like any queue, and what a channel does with it goes to the shard's owner over this node's
queue link to that node (node/shards/link.py).  The owner is looked up at each operation
(the shard's placement record), so publishes follow a shard that moved.

What differs from a local queue, and how the channel (node/clients/channel.py) treats it
(`remote` is True):

* publishing returns REMOTE; `publish_to` then sends the message once per owner node
  (`send`) and the confirm waits for that node's answer;
* counts (declare-ok, delete checks), get and purge are requests to the owner, awaited
  through the channel's backlog so that its replies keep their order;
* a consumer subscribes at the owner (basic.consume-ok once the owner accepted it); its
  deliveries arrive as `RemoteEntry`s carrying the owner's delivery id and the link's
  generation, and acks, rejects and requeues name that id.  A settle of a delivery whose
  link session is gone is dropped (the owner requeued it already, and delivers it again
  with redelivered=true), never a channel error;
* credit: each delivery handed to the client gives the owner room for the next one, unless
  the channel cannot take more now (its client is not reading, its global prefetch is
  reached); then it is given back when the channel dispatches again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Callable, TypeVar

from node.amqp import errors
from node.amqp.message import Message
from node.queues.consumer import Consumer
from node.queues.entry import QueueEntry
from node.queues.queue import REMOTE, store_key
from node.queues.settings import QueueSettings, queue_settings
from node.read_models import QueueStats
from node.shards.link import CREDIT, LinkClient, LinkError, LinkLost, Links, RemoteConsumer

T = TypeVar("T")

# how long a declare waits for the queue's owner to have applied the declaration
DECLARED_WAIT = 5.0
# how long a consumer of a shard that moved or lost its owner waits for the new owner
# (a failover decides within the failover timeout; a move commits at once)
FOLLOW_WAIT = 30.0
FOLLOW_POLL = 0.02
# how long basic.cancel-ok waits for the owner to end a remote consumer
CANCEL_WAIT = 5.0


class Superseded(Exception):
    """This queue object was replaced while an operation waited for its owner (the shard
    failed over or moved, maybe to this node): ask the queue as it is now."""


class RemoteEntry(QueueEntry):
    """A delivery from a remote queue: ``seq`` is the owner's delivery id."""

    __slots__ = ("link", "generation")

    def __init__(self, did: int, message: Message, redelivered: bool, link: LinkClient,
                 generation: int) -> None:
        super().__init__(did, message, redelivered)
        self.link = link  # the link it came on, and which session of it
        self.generation = generation


class RemoteQueue:
    remote = True

    def __init__(self, vhost: str, name: str, unit: str, links: Links,
                 owner_of: Callable[[str], str | None], *, durable: bool = True,
                 exclusive_owner: Any = None,
                 auto_delete: bool = False, arguments: dict | None = None,
                 declaration: str = "", policy: dict | None = None) -> None:
        self.vhost = vhost
        self.name = name
        self.unit = unit  # the shard that holds it (cluster/shards.py unit key)
        self._links = links
        self._owner_of = owner_of
        self.durable = durable
        self.auto_delete = auto_delete
        # an exclusive queue's connection (node/runtime/state.py Elsewhere when it is on
        # another node: refused here)
        self.exclusive_owner: Any = exclusive_owner
        self.in_raft = True  # every queue of a sharded vhost is
        self.arguments = arguments or {}
        self.declaration = declaration
        self.store_key = store_key(name, declaration)
        self.store = None  # the owner's
        self.settings: QueueSettings = queue_settings(self.arguments, policy)
        self.policy_name: str | None = None
        self.consumers: list[Consumer] = []  # this node's consumers of it
        self.exclusive_consumer: Consumer | None = None  # known at the owner only
        self.deleted = False
        self.recovering = False
        # what this node last heard from the owner (declare-ok, get-ok)
        self.message_count = 0
        self.consumer_count = 0
        self.unacked = 0
        self.ready_bytes = 0
        self.message_bytes = 0
        self.had_consumers = False
        self._remote: dict[Consumer, RemoteConsumer] = {}
        self._by_rc: dict[RemoteConsumer, Consumer] = {}
        self._following: set[asyncio.Future] = set()  # consumers following a moved shard
        self._waiting: dict[Consumer, list[RemoteEntry]] = {}  # before basic.consume-ok
        # deliveries that came while the channel's global prefetch was full (its local
        # queues took the room meanwhile): handed on as acks make room (`dispatch`)
        self._parked: dict[Consumer, list[RemoteEntry]] = {}
        self.stats_publish = 0

    def __repr__(self) -> str:
        return f"<RemoteQueue {self.name!r} in {self.vhost!r} on {self.owner}>"

    @property
    def owner(self) -> str | None:
        return self._owner_of(self.unit)

    @property
    def link(self) -> LinkClient:
        owner = self.owner
        if owner is None:
            raise LookupError(f"queue '{self.name}' in vhost '{self.vhost}' has no owner")
        return self._links.to(owner)

    # --- what a local queue has and a remote one does not need -----------------------
    def apply_policy(self, policy_name: str | None, definition: dict | None) -> None:
        self.policy_name = policy_name
        self.settings = queue_settings(self.arguments, definition)

    def touch(self) -> None:
        pass

    def wait_for(self) -> asyncio.Future[None] | None:
        return None

    def close(self) -> None:
        """Gone here (deleted, or its shard is now this node's): its consumers end."""
        self.deleted = True
        consumers = list(self.consumers)  # the runtime tells their channels (drop_queue)
        for c in list(self._remote):
            self._forget(c, tell_owner=True)
        self.consumers = consumers

    def stats(self) -> QueueStats:
        return QueueStats(
            messages_ready=self.message_count, messages_unacknowledged=0,
            messages_ready_ram=0, messages_paged_out=0, message_bytes_ready_ram=0,
            message_bytes_paged_out=0, consumers=tuple(self.consumers),
            exclusive_consumer=None, single_active_consumer=None,
            head_message_timestamp=None)

    # --- publish ---------------------------------------------------------------------
    def publish(self, message: Message) -> int:
        self.stats_publish += 1
        return REMOTE

    @staticmethod
    def send(queues: list["RemoteQueue"], message: Message
             ) -> list[tuple[LinkClient, asyncio.Future[bool]]]:
        """Send ``message`` to the owners of ``queues``: one publish per owner node."""
        if len(queues) == 1:
            q = queues[0]
            return [_publish(q, [q.name], message)]
        by_owner: dict[str | None, list[RemoteQueue]] = {}
        for q in queues:
            by_owner.setdefault(q.owner, []).append(q)
        return [_publish(qs[0], [q.name for q in qs], message) for qs in by_owner.values()]

    # --- one-shot operations (awaited by the channel) --------------------------------
    async def counts(self, declared: bool = False) -> tuple[int, int]:
        """(message_count, consumer_count) at the owner.  ``declared``: this node has just
        seen the declaration commit, and the owner may not have applied it yet (Raft
        applies an entry on each node in its own time): a "no such queue" is asked again
        for a while, so that declare-ok means the owner has the queue."""
        deadline = asyncio.get_event_loop().time() + DECLARED_WAIT
        while True:
            try:
                counts = await self._at_owner(lambda link: link.counts(self.vhost, self.name))
                break
            except LinkError as e:
                if not declared or e.code != errors.NOT_FOUND or self.deleted \
                        or asyncio.get_event_loop().time() > deadline:
                    raise
            await asyncio.sleep(0.01)
        self.message_count, self.consumer_count = counts
        return counts

    async def purge_remote(self) -> int:
        return await self._at_owner(lambda link: link.purge(self.vhost, self.name))

    async def get_remote(self, no_ack: bool) -> tuple[RemoteEntry | None, int]:
        """basic.get at the owner: the entry (None: empty) and the message count."""
        async def get(link: LinkClient) -> tuple[RemoteEntry | None, int]:
            msg, did, redelivered, count, gen = await link.get(self.vhost, self.name, no_ack)
            self.message_count = count
            if msg is None:
                return None, count
            return RemoteEntry(did, msg, redelivered, link, gen), count
        return await self._at_owner(get)

    async def _at_owner(self, op: Callable[[LinkClient], Awaitable[T]]) -> T:
        """Run ``op`` on the link to the queue's owner; when that link is lost first (the
        owner died, stopped, was cut off), run it again once the owner is back or the shard
        has a new one, for up to FOLLOW_WAIT, as a quorum queue's operations wait for its
        new leader.  Asking again is safe: a get the old owner answered on a lost session
        went back to its queue (redelivered), unless no-ack, which is at most once."""
        loop = asyncio.get_event_loop()
        deadline = loop.time() + FOLLOW_WAIT
        while True:
            try:
                link = self.link
            except LookupError as e:  # no owner now (a failover under way)
                if self.deleted:
                    raise Superseded() from None
                if loop.time() > deadline:
                    raise LinkLost(errors.INTERNAL_ERROR, str(e)) from None
                await asyncio.sleep(FOLLOW_POLL)
                continue
            try:
                return await op(link)
            except LinkLost:
                if self.deleted:
                    raise Superseded() from None
                if loop.time() > deadline:
                    raise
            while not self.deleted and loop.time() < deadline:
                owner = self.owner
                if owner is not None and (owner != link.peer or (
                        self._links.to(owner).session is not None)):
                    break
                await asyncio.sleep(FOLLOW_POLL)
            if self.deleted:
                raise Superseded()

    # --- consumers -------------------------------------------------------------------
    def subscribe(self, c: Consumer) -> asyncio.Future[Any]:
        """Subscribe ``c`` (a channel's consumer) at the owner; deliveries are held until
        the channel has answered basic.consume-ok (`started`)."""
        self._waiting[c] = []
        self.consumers.append(c)
        self.had_consumers = True
        answered = self._attach(c)

        def refused(f: asyncio.Future) -> None:
            if f.cancelled() or f.exception() is not None:
                self._forget(c, tell_owner=False)
        answered.add_done_callback(refused)
        return answered

    def _attach(self, c: Consumer) -> asyncio.Future[Any]:
        """Subscribe ``c`` over the link to the queue's owner now."""
        window = _global_window(c)
        credit = max(0, min(CREDIT, _free(c))) if window else CREDIT
        rc, answered = self.link.consume(self.vhost, self.name, c.tag, c.prefetch,
                                         c.no_ack, c.exclusive, c.arguments, self,
                                         credit=credit)
        self._remote[c] = rc
        self._by_rc[rc] = c
        return answered

    def adopt(self, c: Consumer) -> None:
        """A consumer that followed its queue here (the queue's shard left this node):
        subscribed at the owner at once, its consume-ok long sent; cancelled (basic.cancel
        to its client) if the owner refuses it."""
        answered = self.subscribe(c)
        self.started(c)

        def refused(f: asyncio.Future) -> None:
            if f.cancelled() or f.exception() is not None:
                c.owner.cancel_consumers_of(self)
        answered.add_done_callback(refused)

    def started(self, c: Consumer) -> None:
        waiting = self._waiting.get(c)
        while waiting:  # those still waiting count against a global prefetch (`_free`)
            self._hand_or_park(c, waiting.pop(0))
        self._waiting.pop(c, None)

    def add_consumer(self, c: Consumer) -> None:
        self.subscribe(c)

    def remove_consumer(self, c: Consumer) -> None:
        self._forget(c, tell_owner=True)

    def unsubscribe(self, c: Consumer) -> asyncio.Future[None]:
        """basic.cancel: end ``c`` at the owner; resolves once the owner has (what it
        delivered until then reaches the channel first).  Never fails: a consumer whose
        link is gone is gone at the owner too."""
        done: asyncio.Future[None] = asyncio.get_event_loop().create_future()
        rc = self._remote.get(c)
        if rc is None or rc.link is None:
            self._forget(c, tell_owner=False)
            done.set_result(None)
            return done
        ended = rc.link.end(rc)

        def answered(f: asyncio.Future) -> None:
            if not f.cancelled():
                f.exception()
            self._forget(c, tell_owner=False)
            if not done.done():
                done.set_result(None)
        ended.add_done_callback(answered)

        def unanswered() -> None:
            # the owner does not answer (cut off, stopped): the client's cancel-ok is not
            # held for it; deliveries still coming for the consumer go back and end it there
            if not done.done():
                self._forget(c, tell_owner=False)
                done.set_result(None)
        asyncio.get_event_loop().call_later(CANCEL_WAIT, unanswered)
        return done

    def _forget(self, c: Consumer, tell_owner: bool) -> None:
        self._detach(c, tell_owner)
        self._waiting.pop(c, None)
        if c in self.consumers:
            self.consumers.remove(c)

    def _detach(self, c: Consumer, tell_owner: bool) -> RemoteConsumer | None:
        # what never reached the client goes back to the owner (a settle on a session
        # that has ended is dropped: that owner requeued it already)
        waiting = self._waiting.get(c)  # kept while basic.consume-ok is not sent yet
        for entry in [*(waiting or ()), *self._parked.pop(c, ())]:
            entry.link.settle("requeue", entry.generation, entry.seq)
        if waiting:
            waiting.clear()
        rc = self._remote.pop(c, None)
        if rc is None:
            return None
        self._by_rc.pop(rc, None)
        if rc.link is not None:
            if tell_owner:
                rc.link.cancel(rc)
            else:
                rc.link.forget(rc)
        return rc

    # DeliverySink, called by the link
    def delivery(self, rc: RemoteConsumer, did: int, redelivered: bool,
                 message: Message) -> None:
        c = self._by_rc.get(rc)
        link = rc.link
        assert link is not None
        if c is None or c not in self.consumers:  # gone here: give it back, end it there
            link.settle("requeue", link.generation, did)
            link.cancel(rc)
            return
        entry = RemoteEntry(did, message, redelivered, link, link.generation)
        waiting = self._waiting.get(c)
        if waiting is not None:
            waiting.append(entry)
            return
        self._hand_or_park(c, entry)

    def _hand_or_park(self, c: Consumer, entry: RemoteEntry) -> None:
        """Hand ``entry`` to the channel, unless its global prefetch is full: the owner
        sent it within the credit it had, but a local queue of the channel may have
        filled the window since; then it waits here, in order, for an ack to make room
        (the client never holds more unacked deliveries than basic.qos allows)."""
        parked = self._parked.get(c)
        window = _global_window(c)
        if parked or (window and _unacked(c) >= window):
            self._parked.setdefault(c, []).append(entry)
            return
        self._hand(c, entry)

    def _hand(self, c: Consumer, entry: RemoteEntry) -> None:
        if not c.no_ack:
            c.unacked += 1
        c.owner.deliver(c, self, entry)
        rc = self._remote.get(c)
        if rc is not None:
            self._refill(c, rc)

    def _refill(self, c: Consumer, rc: RemoteConsumer) -> None:
        """Give the owner credit up to the link's window for ``rc``, while the channel can
        take deliveries; under a global prefetch, only what the channel's window has free
        (its unacked deliveries and every remote consumer's credit count against it)."""
        if rc.link is None or not c.owner.can_deliver(c):
            return
        n = CREDIT - rc.outstanding
        if _global_window(c):
            n = min(n, _free(c))
        if n > 0:
            rc.link.credit(rc, n)

    def cancelled(self, rc: RemoteConsumer, moved: bool = False) -> None:
        """The owner ended the consumer: the queue is gone there (the channel's client
        hears basic.cancel), or its shard moved (the consumer follows it)."""
        c = self._by_rc.get(rc)
        if c is None:
            return
        if moved and not self.deleted:
            self._detach(c, tell_owner=False)
            self._follow(c, rc.link.peer if rc.link is not None else None)
            return
        self._forget(c, tell_owner=False)
        c.owner.cancel_consumers_of(self)

    def lost(self, rc: RemoteConsumer) -> None:
        """The session ``rc`` was on ended: its link subscribes it again if that node comes
        back; if the shard fails over to another node meanwhile, the consumer follows."""
        c = self._by_rc.get(rc)
        if c is not None and rc.link is not None:
            # what that session delivered and the client has not seen yet is the owner's
            # again (it requeued it): dropped here, it comes again, redelivered
            gen = rc.link.generation
            for held in (self._waiting.get(c), self._parked.get(c)):
                if held:
                    held[:] = [e for e in held if e.generation == gen]
            self._follow(c, rc.link.peer, rc)

    def _follow(self, c: Consumer, old: str | None, rc: RemoteConsumer | None = None
                ) -> None:
        """Subscribe ``c`` at the shard's owner once it is not ``old`` any more (the
        placement record says so here); with ``rc`` (the old subscription, its link
        down), only if that link has not subscribed it again first.  What the old owner
        had delivered and not seen acked comes again from the new one, redelivered."""
        async def follow() -> None:
            loop = asyncio.get_event_loop()
            deadline = loop.time() + FOLLOW_WAIT
            while True:
                if self.deleted or c not in self.consumers:
                    return
                if rc is not None and (self._remote.get(c) is not rc or (
                        rc.active and rc.link is not None and rc.link.session is not None)):
                    return  # subscribed again where it was (or ended meanwhile)
                owner = self.owner
                if owner is not None and owner != old:
                    break
                if loop.time() > deadline:
                    self._forget(c, tell_owner=False)
                    c.owner.cancel_consumers_of(self)
                    return
                await asyncio.sleep(FOLLOW_POLL)
            if rc is not None:
                self._detach(c, tell_owner=False)
            try:
                await self._attach(c)
            except LinkError:
                if c in self.consumers:
                    self._forget(c, tell_owner=False)
                    c.owner.cancel_consumers_of(self)
        task = asyncio.ensure_future(follow())
        self._following.add(task)
        task.add_done_callback(self._following.discard)

    def dispatch(self) -> None:
        """The channel can take deliveries again: hand on what waited for room under its
        global prefetch, then give the owner the credit it held back."""
        for c, parked in list(self._parked.items()):
            window = _global_window(c)
            while parked and not (window and _unacked(c) >= window):
                self._hand(c, parked.pop(0))
            if not parked:
                self._parked.pop(c, None)
        for c, rc in list(self._remote.items()):
            self._refill(c, rc)

    # --- settling (by the owner's delivery ids) ---------------------------------------
    def _settle(self, op: str, entry: QueueEntry, consumer: Consumer | None) -> None:
        if consumer is not None and consumer.unacked:
            consumer.unacked -= 1
        if isinstance(entry, RemoteEntry):
            entry.link.settle(op, entry.generation, entry.seq)

    def ack(self, entry: QueueEntry, consumer: Consumer | None) -> None:
        self._settle("ack", entry, consumer)

    def reject(self, entry: QueueEntry, consumer: Consumer | None) -> None:
        self._settle("reject", entry, consumer)

    def requeue(self, entries: Any) -> None:
        for entry, consumer in entries:
            self._settle("requeue", entry, consumer)

    def taken(self, entry: QueueEntry) -> None:
        pass  # the owner counted it when it answered the get

    def discard(self, entry: QueueEntry) -> None:
        pass


def _global_window(c: Consumer) -> int:
    """The channel's global prefetch (basic.qos global) when it bounds ``c``, else 0."""
    return 0 if c.no_ack else getattr(c.owner, "global_prefetch", 0)


def _unacked(c: Consumer) -> int:
    """Deliveries ``c``'s channel holds unacked (over all its consumers)."""
    channel: Any = c.owner
    return len(channel.unacked)


def _free(c: Consumer) -> int:
    """What the global prefetch of ``c``'s channel leaves: its window, less what is
    delivered and unacked, less what its remote consumers may still be sent."""
    return _global_window(c) - _unacked(c) - held_for(c.owner)


def held_for(channel: Any) -> int:
    """Deliveries the owners of ``channel``'s remote queues may send it without asking:
    the credit its remote consumers hold and what they received before their
    consume-ok.  Under a global prefetch these are spoken for, so a local queue of the
    same channel counts them too: a delivery that finds no room waits (`_hand_or_park`)."""
    held = 0
    for other in channel.consumers.values():
        q = other.queue
        if isinstance(q, RemoteQueue):
            rc = q._remote.get(other)
            if rc is not None:
                held += (rc.outstanding + len(q._waiting.get(other, ()))
                         + len(q._parked.get(other, ())))
    return held


def _publish(q: RemoteQueue, names: list[str], message: Message
             ) -> tuple[LinkClient, asyncio.Future[bool]]:
    link = q.link
    return link, link.publish(q.vhost, names, message)
