"""The queue link: how a node works on queues another node owns (a shard of a sharded vhost
owned elsewhere, docs/ARCHITECTURE.md "Sharded vhosts").

One session per pair of nodes, opened by the node that needs the other's queues
(`LinkClient`) on the owner's cluster port (facts ``{"kind": "queues", "node": me}``,
after the mutual HMAC handshake), served there by `LinkServer` against the owner's own
`Queue` objects.  Frames are cluster/wire.py's: CONTROL maps, and MESSAGE frames whose
meta is a short msgpack array and whose payload is the message's store record
(`Message.encode()`), so a message crosses the link as the bytes its store keeps.

The session is read in order on both ends, so everything one node sends about a queue
(a channel's publishes, its acks, a get after a nack) reaches the owner in the order it
was sent.  What it carries:

* **publish** ``MESSAGE [0, seq, vhost, [queue, ...]]`` + record: the owner enqueues it in
  its queues as a local publish does and answers ``ack``/``nack`` ``upto`` seq, in runs,
  once the durable write is settled (on disk here and on the in-sync replicas) — a nack
  when a queue refused it (reject-publish), is gone, or is not this node's any more.
* **consumers**: ``consume`` attaches a `Consumer` on the owner whose owner object is the
  session itself (`ConsumerOwner`); it delivers ``MESSAGE [1, cid, delivery id,
  redelivered]`` + record while the consumer has *credit* (deliveries the client node has
  not yet handed to its client; ``credit`` gives more back) and, unless no-ack, its
  prefetch allows.  ``ack`` / ``reject`` / ``requeue`` name the owner's delivery ids;
  ``cancel`` ends a consumer; the owner's ``cancelled`` says the queue is gone.  When the
  session ends, the owner requeues everything it delivered on it and did not see acked, as
  a channel close does, so it comes again with redelivered=true.
* **one-shot operations** (``get``, ``purge``, ``counts``) carry a request id ``rid``; the
  answer is ``reply`` / ``error`` (an AMQP code and text) or, for a get that found a
  message, ``MESSAGE [2, rid, delivery id, redelivered, message_count]`` + record.

The client keeps at most `WINDOW` publishes (or `WINDOW_BYTES`) unanswered; past that the
connections whose publishes fill it are no longer read (read hold "link") until half of it
is answered.  While the link is down (the owner restarting, failing over) publishes and
requests wait in order for the next session, at most `queued_timeout`; what was in flight
when a session ended is nacked (publishes) or failed (requests): it may or may not have
reached the owner.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from cluster import wire
from node.amqp import errors
from node.amqp.message import Message
from node.queues.consumer import Consumer
from node.queues.entry import QueueEntry
from node.queues.outcome import all_settled
from node.queues.queue import Queue
from node.read_models import ChannelStats
from node.shards.publish_ids import PID_BYTES, publish_once

log = logging.getLogger("warren.shards.link")

PUBLISH, DELIVER, GET_OK, REPLY = 0, 1, 2, 3

WINDOW = 4096  # publishes one link keeps unanswered before its publishers are held
WINDOW_BYTES = 32 << 20
CREDIT = 256  # deliveries in flight to one remote consumer, not yet handed to its client
RECONNECT_DELAY = 0.1
RECONNECT_MAX_DELAY = 1.0
QUEUED_TIMEOUT = 3.0  # how long requests wait for a session
# how long publishes wait for their queues' owner: the node to come back, or the shard to
# fail over or move to another (a failover decides within the failover timeout)
PUBLISH_WAIT = 30.0
# how long the owner waits to have applied the definitions its peer had applied when it
# sent a request (a declare, bind or move committed there a moment ago)
APPLIED_WAIT = 5.0
AUTO_DELETE_WAIT = 2.0  # a cancel's answer waits at most this for the auto-delete
# both ends say they are alive this often, and end a session that said nothing for
# LINK_SILENCE: a stopped or cut-off peer leaves no RST to notice (SIGSTOP, a partition),
# and what was in flight to it must go to the shard's new owner
HEARTBEAT_INTERVAL = 0.5
LINK_SILENCE = 3.0
_HEARTBEAT = wire.control({"t": "hb"})

Connect = Callable[[str, dict], Awaitable[tuple[asyncio.Transport, wire.Link]]]


class LinkError(Exception):
    """The owner refused an operation (an AMQP reply code and text), or the link could not
    carry it."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class LinkLost(LinkError):
    """The session that carried a request ended before its answer (it may or may not have
    been done), or no session opened in time."""


def _record(message: Message) -> bytes:
    """The message's store record, without keeping it on the message when it was not
    kept already (a delivered message is not to hold a second copy of itself)."""
    rec = message._record
    if rec is None:
        rec = message.encode()
        message._record = None
    return rec


# =========================================================================================
# the owner's end
# =========================================================================================
class LinkServer(wire.FramedProtocol):
    """Executes one peer node's operations on this node's queues."""

    def __init__(self, vhosts: Callable[[], dict[str, Any]], owns: Callable[[str], bool],
                 peer: str, sessions: set["LinkServer"] | None = None,
                 applied: Any = None,
                 replies: Callable[[], dict[str, Any]] | None = None) -> None:
        super().__init__()
        # the channels waiting for direct replies, by reply key (runtime.reply_channels)
        self._replies = replies
        # this node's Raft progress (cluster/raft.py MetadataStore: applied_here,
        # wait_applied): a peer's "ix" waits until this node has applied as much
        self._applied = applied
        self._vhosts = vhosts  # the runtime's vhosts by name (runtime.vhosts)
        self._owns = owns  # whether this node runs a unit (runtime.owns)
        # the node's open link sessions, for what must pause them all (a move's drain)
        self._sessions = sessions
        if sessions is not None:
            sessions.add(self)
        self.read_holds: set[str] = set()
        self.output_holds: set[str] = set()  # while any: no deliveries (the owner lease)
        self.peer = peer
        self.open = True
        self._out: list[bytes] = []
        self._flush_scheduled = False
        # publishes in arrival order: [seq, settled, ok]
        self._confirms: deque[list] = deque()
        self._confirms_scheduled = False
        self._flush_future: asyncio.Future | None = None
        self._flush_entries: list[list] = []
        self._consumers: dict[int, Consumer] = {}
        self._cids: dict[Consumer, int] = {}
        self._credit: dict[Consumer, int] = {}
        # delivered on this link, awaiting an ack: delivery id -> (queue, entry, consumer)
        self._unacked: dict[int, tuple[Queue, QueueEntry, Consumer | None]] = {}
        self._next_did = 0
        self._tasks: set[asyncio.Task] = set()
        self._heard = asyncio.get_event_loop().time()
        self._beat = asyncio.get_event_loop().call_later(HEARTBEAT_INTERVAL, self._heartbeat)

    def _heartbeat(self) -> None:
        """Say this node is alive (whether or not it reads the peer now), and end the
        session when the peer has said nothing for LINK_SILENCE while it was being read
        (its node stopped or cut off: what it had not acked goes back to the queues)."""
        if not self.open:
            return
        now = asyncio.get_event_loop().time()
        if self.read_holds or self._frames_held:
            self._heard = now  # not reading: silence says nothing
        elif now - self._heard > LINK_SILENCE:
            self.fail(f"no word from {self.peer} for {now - self._heard:.1f} s")
            return
        self.send(_HEARTBEAT)
        self._beat = asyncio.get_event_loop().call_later(HEARTBEAT_INTERVAL, self._heartbeat)

    # ------------------------------------------------------------------ output
    def _queue(self, frame: bytes) -> None:
        self._out.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_event_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        self.send_many(out)

    def _reply(self, rid: Any, **fields: Any) -> None:
        self._queue(wire.control({"t": "reply", "rid": rid, **fields}))

    def _error(self, rid: Any, code: int, text: str) -> None:
        self._queue(wire.control({"t": "error", "rid": rid, "code": code, "text": text}))

    # ------------------------------------------------------------------ input
    def frame_received(self, kind: int, body: bytes) -> None:
        self._heard = asyncio.get_event_loop().time()
        if kind == wire.MESSAGE:
            meta, record = self.decode_message(body)
            if isinstance(meta, list) and len(meta) == 3 and meta[0] == REPLY:
                self._reply_to(str(meta[1]), str(meta[2]), record)
                return
            if not isinstance(meta, list) or len(meta) not in (4, 5) or meta[0] != PUBLISH:
                raise wire.WireError("expected a publish")
            seq = int(meta[1])
            try:
                self._publish(seq, str(meta[2]), meta[3], record,
                              len(meta) == 5 and bool(meta[4]))
            except Exception:
                # one publish this node cannot take is nacked; the session goes on (were it
                # ended, the sender would send it again, and end the next one too)
                log.exception("publish %d from %s not taken", seq, self.peer)
                self._confirms.append([seq, True, False])
                self._send_confirms()
            return
        if kind != wire.CONTROL:
            raise wire.WireError(f"unexpected frame kind {kind}")
        m = self.decode_control(body)
        handler = _SERVER_HANDLERS.get(m.get("t"))  # type: ignore[arg-type]
        if handler is None:
            raise wire.WireError(f"unknown queue-link message {m.get('t')!r}")
        try:
            handler(self, m)
        except (TypeError, KeyError, AttributeError) as e:
            raise wire.WireError(f"malformed {m.get('t')!r}: {e!r}") from None

    def _local(self, vhost: str, name: str) -> Queue | None:
        """The queue ``name`` when this node has it as its own: a `Queue` of a shard this
        node runs (not a stand-in for another node's, not a placeholder of a vhost another
        node owns)."""
        vh = self._vhosts().get(vhost)
        q = vh.queues.get(name) if vh is not None else None
        if not isinstance(q, Queue) or q.deleted or not self._owns(q.unit):
            return None
        return q

    def _lookup(self, m: dict) -> Queue:
        vhost, name = str(m.get("vhost")), str(m.get("queue"))
        q = self._local(vhost, name)
        if q is None:
            raise errors.not_found("queue", name, vhost)
        if q.exclusive_owner is not None \
                and getattr(q.exclusive_owner, "node", None) != self.peer:
            # an exclusive queue is its connection's: served only to that connection's
            # node (which checks that it is that connection)
            raise _locked(name, vhost)
        return q

    # ------------------------------------------------------------------ publish
    def _publish(self, seq: int, vhost: str, names: Any, record: bytes,
                 again: bool = False) -> None:
        """Enqueue a peer's publish ``seq``; ``again``: it was on its way when an earlier
        session ended, so a queue that took it then does not take it twice
        (node/shards/publish_ids.py)."""
        queues: list[Queue] = []
        moved: dict[Any, list[str]] = {}  # a link to a queue's new owner -> its names
        missing = not isinstance(names, list)
        for name in names if not missing else ():
            q = self._local(vhost, str(name))
            if q is not None:
                queues.append(q)
                continue
            link = self._moved_to(vhost, str(name))
            if link is None:
                missing = True
            else:
                moved.setdefault(link, []).append(str(name))
        ok = not missing
        settled = None
        msg: Message | None = None
        if queues:
            msg = Message.decode(record)
            msg._record = record  # stored as it came: not encoded again
            taken, settled = publish_once(queues, msg, again)
            ok = ok and taken
        if moved:
            # the queue's shard moved, and the peer sent before it knew: this node, which
            # knows, passes the message on to the new owner and answers with its answer
            if msg is None:
                msg = Message.decode(record)
                msg._record = record
            # marked as sent again: the sender may send it to the new owner itself too
            answers = [link.publish(vhost, names_there, msg, True)
                       for link, names_there in moved.items()]
            self._answer_when(seq, ok, all_settled([settled] if settled else [], answers))
            return
        entry = [seq, settled is None, ok]
        self._confirms.append(entry)
        if settled is None:
            # answered with whatever else this read brought: one run, one frame
            if not self._confirms_scheduled:
                self._confirms_scheduled = True
                asyncio.get_event_loop().call_soon(self._send_confirms)
            return
        if settled is not self._flush_future:
            self._flush_future = settled
            entries: list[list] = []
            self._flush_entries = entries

            def flushed(fut: asyncio.Future) -> None:
                good = not fut.cancelled() and fut.exception() is None
                for e in entries:
                    e[1] = True
                    e[2] = e[2] and good
                self._send_confirms()
            settled.add_done_callback(flushed)
        self._flush_entries.append(entry)

    def _reply_to(self, vhost: str, key: str, record: bytes) -> None:
        """A direct reply (amq.rabbitmq.reply-to) to a requester on this node: to its
        channel if it still waits, else dropped, as RabbitMQ drops it."""
        channel = self._replies().get(key) if self._replies is not None else None
        if channel is not None and channel.vhost.name == vhost:
            channel.deliver_reply(Message.decode(record))

    def _moved_to(self, vhost: str, name: str) -> Any:
        """The link to the owner of queue ``name`` when its shard is another node's now
        (this node stands in for it with a remote queue), else None."""
        vh = self._vhosts().get(vhost)
        q = vh.queues.get(name) if vh is not None else None
        if q is None or not getattr(q, "remote", False) or getattr(q, "deleted", False):
            return None
        try:
            return q.link
        except LookupError:
            return None

    def _answer_when(self, seq: int, ok: bool, settled: asyncio.Future[None]) -> None:
        """Answer publish ``seq`` once ``settled`` is (outcome.all_settled of the local
        flush and the new owners' answers): an ack if it succeeded and ``ok``."""
        entry = [seq, False, ok]
        self._confirms.append(entry)

        def done(fut: asyncio.Future) -> None:
            good = not fut.cancelled() and fut.exception() is None
            entry[1], entry[2] = True, entry[2] and good
            self._send_confirms()
        settled.add_done_callback(done)

    def _send_confirms(self) -> None:
        self._confirms_scheduled = False
        confirms = self._confirms
        while confirms and confirms[0][1]:
            ok = confirms[0][2]
            last = 0
            while confirms and confirms[0][1] and confirms[0][2] == ok:
                last = confirms.popleft()[0]
            self._queue(wire.control({"t": "ack" if ok else "nack", "upto": last}))

    # ------------------------------------------------------------------ consumers
    def _on_consume(self, m: dict) -> None:
        rid, cid = m.get("rid"), int(m.get("cid", 0))
        try:
            q = self._lookup(m)
            exclusive = bool(m.get("exclusive"))
            if q.exclusive_consumer is not None or (exclusive and q.consumers):
                raise errors.ChannelError(
                    errors.ACCESS_REFUSED,
                    f"{errors.resource_text('queue', q.name, q.vhost)} in exclusive use")
            if q.settings.single_active_consumer and exclusive:
                raise errors.precondition(
                    "exclusive consume is not allowed on a single active consumer "
                    f"{errors.resource_text('queue', q.name, q.vhost)}")
        except errors.AMQPError as e:
            self._error(rid, e.code, e.text)
            return
        old = self._consumers.pop(cid, None)
        if old is not None:  # subscribed again under the same id: the old one ends
            self._drop_consumer(old)
        args = m.get("arguments") or {}
        c = Consumer(str(m.get("tag", "")), q, self, bool(m.get("no_ack")), exclusive,
                     int(m.get("prefetch") or 0), args if isinstance(args, dict) else {})
        prio = args.get("x-priority") if isinstance(args, dict) else None
        if isinstance(prio, int) and not isinstance(prio, bool):
            c.priority = prio
        self._consumers[cid] = c
        self._cids[c] = cid
        self._credit[c] = int(m.get("credit", CREDIT))
        self._reply(rid)  # before the first delivery
        q.add_consumer(c)

    def _drop_consumer(self, c: Consumer) -> None:
        self._cids.pop(c, None)
        self._credit.pop(c, None)
        c.queue.remove_consumer(c)

    def _on_cancel(self, m: dict) -> None:
        c = self._consumers.pop(int(m.get("cid", 0)), None)
        if c is not None:
            self._drop_consumer(c)
        if "rid" not in m:
            return
        q = c.queue if c is not None else None
        if q is None or not (q.auto_delete and not q.consumers and not q.deleted):
            self._reply(m["rid"])
            return

        # the last consumer of an auto-delete queue: it is being deleted (through Raft);
        # cancel-ok once it is gone here, as RabbitMQ's queue is gone by then
        async def deleted() -> None:
            for _ in range(int(AUTO_DELETE_WAIT / 0.005)):
                if q.deleted:
                    break
                await asyncio.sleep(0.005)
            self._reply(m["rid"])
        task = asyncio.ensure_future(deleted())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_credit(self, m: dict) -> None:
        touched = set()
        for cid, n in m.get("c") or ():
            c = self._consumers.get(int(cid))
            if c is not None:
                self._credit[c] = self._credit.get(c, 0) + int(n)
                touched.add(c.queue)
        for q in touched:
            q.dispatch()

    # ConsumerOwner, called by the queues
    def can_deliver(self, consumer: Consumer) -> bool:
        return self.open and not self._paused_writing and not self.output_holds \
            and self._credit.get(consumer, 0) > 0

    def hold_output(self, reason: str) -> None:
        """Deliver nothing until released (a node whose owner lease lapsed stops serving
        its queues, to the peers' consumers as to its own clients)."""
        self.output_holds.add(reason)

    def release_output(self, reason: str) -> None:
        if reason in self.output_holds:
            self.output_holds.discard(reason)
            if not self.output_holds:
                for q in {c.queue for c in self._consumers.values()}:
                    q.dispatch()

    def deliver(self, consumer: Consumer, queue: Queue, entry: QueueEntry) -> None:
        self._next_did += 1
        did = self._next_did
        if not consumer.no_ack:
            self._unacked[did] = (queue, entry, consumer)
        self._credit[consumer] -= 1
        self._queue(wire.message((DELIVER, self._cids[consumer], did, entry.redelivered),
                                 _record(entry.message)))

    def cancel_consumers_of(self, queue: Queue) -> None:
        # the queue is deleted, or its shard is no longer this node's (moved: the peer's
        # consumers follow it to the new owner)
        moved = not self._owns(queue.unit)
        for cid, c in list(self._consumers.items()):
            if c.queue is queue:
                del self._consumers[cid]
                self._cids.pop(c, None)
                self._credit.pop(c, None)
                self._queue(wire.control({"t": "cancelled", "cid": cid, "moved": moved}))

    def resume_writing(self) -> None:
        super().resume_writing()
        for q in {c.queue for c in self._consumers.values()}:
            q.dispatch()

    def hold_reading(self, reason: str) -> None:
        """Read nothing more from the peer until released (as a client connection's
        read holds: a move pauses what writes to the store it drains)."""
        self.read_holds.add(reason)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def release_reading(self, reason: str) -> None:
        self.read_holds.discard(reason)
        if not self.read_holds and not self._frames_held and self.transport is not None \
                and not self.transport.is_closing():
            self.transport.resume_reading()

    def release_frames(self) -> None:
        if self.read_holds:  # still held by a move: its release reads on
            self._frames_held = False
            self.data_received(b"")
            return
        super().release_frames()

    def _on_ix(self, m: dict) -> None:
        """What follows was sent once the peer had applied Raft index ``ix``: nothing more
        is handled until this node has too (bounded: a node that lags that long still
        answers, from what it has)."""
        index = int(m["ix"])
        applied = self._applied
        if applied is None or applied.applied_here >= index:
            return
        self.hold_frames()

        async def wait() -> None:
            if not await applied.wait_applied(index, APPLIED_WAIT):
                log.warning("queue link from %s: Raft index %d not applied here within "
                            "%g s; going on", self.peer, index, APPLIED_WAIT)
            self.release_frames()
        task = asyncio.ensure_future(wait())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stats(self) -> ChannelStats:
        """The link as the management API shows a consumer's channel: the peer node's
        clients consume through it."""
        return ChannelStats(
            number=0, connection_name=f"queue link from {self.peer}", user="",
            vhost=None, state="running" if self.open else "closed",
            consumers=tuple(self._consumers.values()), prefetch_count=0,
            global_prefetch_count=0, confirm=True, transactional=False,
            messages_unacknowledged=len(self._unacked),
            messages_unconfirmed=len(self._confirms), messages_uncommitted=0,
            acks_uncommitted=0, pending_raft_commands=0)

    # ------------------------------------------------------------------ settling
    def _take(self, m: dict) -> list[tuple[Queue, QueueEntry, Consumer | None]]:
        out = []
        for did in m.get("ids") or ():
            item = self._unacked.pop(int(did), None)
            if item is not None:
                out.append(item)
        return out

    def _on_ack(self, m: dict) -> None:
        touched = set()
        for q, entry, consumer in self._take(m):
            q.ack(entry, consumer)
            touched.add(q)
        _dispatch(touched)

    def _on_reject(self, m: dict) -> None:
        touched = set()
        for q, entry, consumer in self._take(m):
            q.reject(entry, consumer)
            touched.add(q)
        _dispatch(touched)

    def _on_requeue(self, m: dict) -> None:
        _requeue(self._take(m))

    # ------------------------------------------------------------------ one-shot operations
    def _when_ready(self, m: dict, then: Callable[[dict], None]) -> None:
        """Run ``then(m)`` now, or once the queue can answer with its counts (it is
        recovering, or its next batch is being read)."""
        try:
            q = self._lookup(m)
        except errors.AMQPError as e:
            self._error(m.get("rid"), e.code, e.text)
            return
        wait = q.wait_for()
        if wait is None:
            self._answer(m, then)
            return

        async def later() -> None:
            await wait
            if self.open:
                self._when_ready(m, then)
        task = asyncio.ensure_future(later())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _answer(self, m: dict, then: Callable[[dict], None]) -> None:
        try:
            then(m)
        except errors.AMQPError as e:
            self._error(m.get("rid"), e.code, e.text)

    def _on_get(self, m: dict) -> None:
        self._when_ready(m, self._get)

    def _get(self, m: dict) -> None:
        q = self._lookup(m)
        entry = q.get()
        if entry is None:
            self._reply(m.get("rid"), empty=True, message_count=q.message_count)
            return
        self._next_did += 1
        did = self._next_did
        if m.get("no_ack"):
            q.discard(entry)
        else:
            q.taken(entry)
            self._unacked[did] = (q, entry, None)
        self._queue(wire.message((GET_OK, m.get("rid"), did, entry.redelivered,
                                  q.message_count), _record(entry.message)))

    def _on_purge(self, m: dict) -> None:
        self._when_ready(m, self._purge)

    def _purge(self, m: dict) -> None:
        self._reply(m.get("rid"), message_count=self._lookup(m).purge())

    def _on_counts(self, m: dict) -> None:
        self._when_ready(m, self._counts)

    def _counts(self, m: dict) -> None:
        q = self._lookup(m)
        self._reply(m.get("rid"), message_count=q.message_count,
                    consumer_count=q.consumer_count)

    # ------------------------------------------------------------------ the end
    def connection_lost(self, exc: Exception | None) -> None:
        """The peer node is gone (or the link broke): its consumers end and what they had
        not acked goes back to the queues, redelivered=true, as when a channel closes."""
        self.open = False
        self._beat.cancel()
        if self._sessions is not None:
            self._sessions.discard(self)
        for task in self._tasks:
            task.cancel()
        consumers, self._consumers = self._consumers, {}
        for c in consumers.values():
            self._drop_consumer(c)
        unacked, self._unacked = self._unacked, {}
        _requeue(list(unacked.values()))
        super().connection_lost(exc)


def _locked(name: str, vhost: str) -> errors.ChannelError:
    return errors.ChannelError(
        errors.RESOURCE_LOCKED,
        f"cannot obtain exclusive access to locked "
        f"{errors.resource_text('queue', name, vhost)}: it is exclusive to a connection "
        f"of its owner node")


def _dispatch(queues: set[Queue]) -> None:
    for q in queues:
        if q.consumers:
            q.dispatch()


def _requeue(items: list[tuple[Queue, QueueEntry, Consumer | None]]) -> None:
    """Requeue, per queue, in delivery order (the order of ``items``)."""
    by_queue: dict[Queue, list] = {}
    for q, entry, consumer in items:
        by_queue.setdefault(q, []).append((entry, consumer))
    for q, pairs in by_queue.items():
        q.requeue(pairs)


_SERVER_HANDLERS: dict[str, Callable[[LinkServer, dict], None]] = {
    "hb": lambda _server, _m: None,  # heard: that is all it says
    "ix": LinkServer._on_ix,
    "consume": LinkServer._on_consume,
    "cancel": LinkServer._on_cancel,
    "credit": LinkServer._on_credit,
    "ack": LinkServer._on_ack,
    "reject": LinkServer._on_reject,
    "requeue": LinkServer._on_requeue,
    "get": LinkServer._on_get,
    "purge": LinkServer._on_purge,
    "counts": LinkServer._on_counts,
}


# =========================================================================================
# the other node's end
# =========================================================================================
class DeliverySink(Protocol):
    """Where a remote consumer's deliveries go (node/shards/remote_queue.py)."""

    def delivery(self, rc: "RemoteConsumer", did: int, redelivered: bool,
                 message: Message) -> None: ...

    def cancelled(self, rc: "RemoteConsumer", moved: bool = False) -> None:
        """The owner ended ``rc``: the queue is gone, or (``moved``) its shard is no
        longer that node's."""

    def lost(self, rc: "RemoteConsumer") -> None:
        """The session ``rc`` was subscribed on ended (the link subscribes it again when
        the same node comes back)."""


class RemoteConsumer:
    """A consumer this node holds on a queue of the link's peer."""

    __slots__ = ("cid", "vhost", "queue", "tag", "prefetch", "no_ack", "exclusive",
                 "arguments", "sink", "credit", "active", "outstanding", "link")

    def __init__(self, cid: int, vhost: str, queue: str, tag: str, prefetch: int,
                 no_ack: bool, exclusive: bool, arguments: dict, sink: DeliverySink,
                 credit: int = CREDIT) -> None:
        self.cid = cid
        self.vhost = vhost
        self.queue = queue
        self.tag = tag
        self.prefetch = prefetch
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.arguments = arguments
        self.sink = sink
        self.credit = credit  # deliveries the owner may send before it hears back
        self.active = False  # subscribed at the owner (consume answered)
        self.outstanding = 0  # deliveries the owner may send now (the credit it holds)
        self.link: LinkClient | None = None  # the link it is subscribed over


class _ClientSession(wire.FramedProtocol):
    def __init__(self, client: "LinkClient") -> None:
        super().__init__()
        self.client = client
        self.heard = asyncio.get_event_loop().time()

    def frame_received(self, kind: int, body: bytes) -> None:
        self.heard = asyncio.get_event_loop().time()
        self.client._frame(self, kind, body)

    async def beat(self) -> None:
        """Heartbeats out; the session ends when the owner said nothing for LINK_SILENCE."""
        loop = asyncio.get_event_loop()
        while not self.closed.done():
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            silent = loop.time() - self.heard
            if silent > LINK_SILENCE:
                self.fail(f"no word from {self.client.peer} for {silent:.1f} s")
                return
            self.send(_HEARTBEAT)



class LinkClient:
    """This node's link to one peer node: reconnects, keeps order, bounds what is in flight."""

    def __init__(self, me: str, peer: str, address: Callable[[], str | None],
                 connect: Connect, queued_timeout: float = QUEUED_TIMEOUT,
                 applied: Callable[[], int] = lambda: 0) -> None:
        self.me = me
        # this node's Raft progress (MetadataStore.applied_here): what a frame is sent
        # after, the owner handles after it has applied as much ("ix")
        self._applied = applied
        self._sent_index = 0
        self.peer = peer
        self._address = address
        self._connect = connect
        self.queued_timeout = queued_timeout
        self.session: _ClientSession | None = None
        # bumped when a session ends: a delivery of an older generation cannot be settled
        self.generation = 0
        self.closed = False
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._up: asyncio.Event = asyncio.Event()
        self._attempts = 0
        self._seq = 0
        self._wire_seq = 0  # the newest publish handed to a live session
        # publish ids: this link's nonce, then the sequence number (node/shards/publish_ids)
        self._nonce = os.urandom(PID_BYTES - 8)
        # unanswered publishes, oldest first: [seq, future, size, vhost, names, record,
        # sent again (it was on its way when a session ended), answer by (loop time)]
        self._pending: deque[list] = deque()
        # called when a session ends with publishes waiting: those for queues the peer no
        # longer owns go to their new owners (set by `Links.to`: Links.owners_changed for
        # this link alone), as a Raft event that named the new owner first could not
        self.on_lost: Callable[[], None] | None = None
        self._pending_bytes = 0
        self._rid = 0
        # request id -> (future, the generation it went out in; None: still queued)
        self._requests: dict[int, list] = {}
        self._cid = 0
        self.consumers: dict[int, RemoteConsumer] = {}
        self._out: list[bytes] = []
        self._settle_op: str | None = None
        self._settle_ids: list[int] = []
        self._credit_out: dict[int, int] = {}
        self._flush_scheduled = False
        # frames waiting for a session: (frame, kind, key): kind "publish" (key: seq) or
        # "request" (key: rid)
        self._backlog: deque[tuple[bytes, str, int]] = deque()
        self._backlog_timer: asyncio.TimerHandle | None = None
        self._held: set[Any] = set()
        # consumers the owner delivered to that this node no longer has: cancelled there
        self._orphans: set[int] = set()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "LinkClient":
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return self

    async def ready(self) -> None:
        """Wait for a session; raises ConnectionError when an attempt fails meanwhile."""
        attempts = self._attempts
        while not self._up.is_set():
            if self.closed:
                raise ConnectionError("link closed")
            if self._attempts > attempts and self.last_error is not None:
                raise ConnectionError(self.last_error)
            await asyncio.sleep(0.01)

    async def _run(self) -> None:
        delay = RECONNECT_DELAY
        while not self.closed:
            address = self._address()
            if address is None:
                self.last_error = f"no address for node {self.peer}"
                self._attempts += 1
                await asyncio.sleep(delay)
                continue
            try:
                transport, link = await self._connect(address, {"kind": "queues",
                                                                "node": self.me})
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self.last_error is None:  # once per outage, not per attempt
                    log.info("cannot open the queue link to %s at %s: %s (retrying)",
                             self.peer, address, e)
                self.last_error = f"cannot open the queue link to {self.peer} at {address}: {e}"
                self._attempts += 1
                await asyncio.sleep(delay)
                # a node that stays down (stopped, forgotten) is tried less and less often
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
                continue
            delay = RECONNECT_DELAY
            session = _ClientSession(self)
            session.take_over(transport, link)
            self.last_error = None
            self._attempts += 1
            self._connected(session)
            beat = asyncio.ensure_future(session.beat())
            await session.closed
            beat.cancel()
            self._lost(session)
            if not self.closed:
                await asyncio.sleep(RECONNECT_DELAY)

    def close(self) -> None:
        self.closed = True
        if self._task is not None:
            self._task.cancel()
        session = self.session
        if session is not None:
            session.close()
            self._lost(session)
        self._fail_backlog("the queue link is closed")
        self._release_held()

    def _connected(self, session: _ClientSession) -> None:
        self.session = session
        self._sent_index = 0  # a new session knows nothing yet
        self._up.set()
        if self._backlog_timer is not None:
            self._backlog_timer.cancel()
            self._backlog_timer = None
        # consumers subscribed before the link broke subscribe again first: the owner
        # requeued what they had not acked, and delivers it again
        for rc in list(self.consumers.values()):
            if rc.active:
                self._subscribe(rc, resubscribe=True)
        backlog, self._backlog = self._backlog, deque()
        for frame, kind, key in backlog:
            self._out_frame(frame)
            if kind == "publish":
                self._wire_seq = key
            else:
                req = self._requests.get(key)
                if req is not None:
                    req[1] = self.generation

    def _lost(self, session: _ClientSession) -> None:
        if self.session is not session:
            return
        self.session = None
        self._up.clear()
        gen = self.generation
        self.generation += 1
        self._out.clear()
        self._settle_op, self._settle_ids = None, []
        self._credit_out.clear()
        # a publish no owner answered within PUBLISH_WAIT of its first send is nacked, not
        # sent again (one that every session it reaches ends must not go round for ever)
        self._nack_overdue(f"no answer from {self.peer} within {PUBLISH_WAIT:g} s",
                           sent_only=True)
        again: list[tuple[bytes, str, int]] = []
        # publishes that went out may or may not have reached the owner: sent again, marked
        # so (to this node when it is back, or to the queues' new owner: `reroute`), and
        # the owner does not enqueue one twice
        for entry in self._pending:
            if entry[0] > self._wire_seq:
                break
            entry[6] = True
            again.append((_publish_frame(entry), "publish", entry[0]))
        for rid, req in list(self._requests.items()):
            if req[1] != gen:
                continue
            if req[2] is not None:  # idempotent (counts, consume): asked again
                req[1] = None
                again.append((req[2], "request", rid))
                continue
            del self._requests[rid]
            if not req[0].done():
                req[0].set_exception(LinkLost(
                    errors.INTERNAL_ERROR,
                    f"the link to node {self.peer}, the queue's owner, was lost"))
        if again:
            self._backlog.extendleft(reversed(again))
        if self._backlog:
            self._arm_backlog_timer()
            if self.on_lost is not None and not self.closed:
                try:
                    self.on_lost()
                except Exception:
                    log.exception("could not pass the publishes waiting for %s on", self.peer)
        for rc in list(self.consumers.values()):
            rc.outstanding = 0  # the owner forgot the consumer with the session
            if rc.active and not self.closed:
                rc.sink.lost(rc)
        self._release_if_below()

    # ------------------------------------------------------------------ output
    def _out_frame(self, frame: bytes) -> None:
        if self._settle_op is not None:
            self._emit_settles()
        index = self._applied()
        if index > self._sent_index:
            self._sent_index = index
            self._out.append(wire.control({"t": "ix", "ix": index}))
        self._out.append(frame)
        self._schedule()

    def _schedule(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_event_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._settle_op is not None:
            self._emit_settles()
        if self._credit_out:
            credit, self._credit_out = self._credit_out, {}
            self._out.append(wire.control({"t": "credit",
                                           "c": [[k, v] for k, v in credit.items()]}))
        out, self._out = self._out, []
        if self.session is not None:
            self.session.send_many(out)

    def _emit_settles(self) -> None:
        op, ids = self._settle_op, self._settle_ids
        self._settle_op, self._settle_ids = None, []
        self._out.append(wire.control({"t": op, "ids": ids}))

    def _send(self, frame: bytes, kind: str, key: int) -> None:
        """A frame that must reach the owner: now, or when the next session opens."""
        if self.session is not None:
            self._out_frame(frame)
            if kind == "publish":
                self._wire_seq = key
            return
        self._backlog.append((frame, kind, key))
        self._arm_backlog_timer()

    def _arm_backlog_timer(self) -> None:
        if self._backlog_timer is None and not self.closed:
            self._backlog_timer = asyncio.get_event_loop().call_later(
                self.queued_timeout, self._backlog_expired)

    def _backlog_expired(self) -> None:
        self._backlog_timer = None
        if self.session is not None:
            return
        why = (f"node {self.peer}, the queue's owner, cannot be reached "
               f"({self.last_error or 'connecting'})")
        # requests fail now; each publish waits for the owner (or a new one: `reroute`)
        # until PUBLISH_WAIT after it was first sent
        now = self._nack_overdue(why)
        pending = {entry[0] for entry in self._pending}
        kept: deque[tuple[bytes, str, int]] = deque()
        for item in self._backlog:
            if item[1] == "request":
                self._fail_request(item[2], why)
            elif item[1] != "publish" or item[2] in pending:
                kept.append(item)
        self._backlog = kept
        if self._backlog:
            wait = QUEUED_TIMEOUT
            if self._pending:
                wait = min(wait, max(self._pending[0][7] - now, 0.01))
            self._backlog_timer = asyncio.get_event_loop().call_later(
                wait, self._backlog_expired)
        self._release_if_below()

    def _fail_request(self, rid: int, why: str) -> None:
        req = self._requests.pop(rid, None)
        if req is not None and not req[0].done():
            req[0].set_exception(LinkLost(errors.INTERNAL_ERROR, why))

    def _fail_backlog(self, why: str) -> None:
        backlog, self._backlog = self._backlog, deque()
        if self._backlog_timer is not None:
            self._backlog_timer.cancel()
            self._backlog_timer = None
        for _frame, kind, key in backlog:
            if kind == "request":
                self._fail_request(key, why)
        # queued publishes are the pending ones (what was in flight is queued again)
        while self._pending:
            self._settle_one(False, why)
        self._release_if_below()

    def reroute(self, owned_here: Callable[[str, list[str]], bool],
                republish: Callable[[str, list[str], bytes, bool, asyncio.Future[bool]],
                                    None]) -> None:
        """The owners of some shards changed (a Raft event), or a session ended: the
        unanswered publishes for queues this node does not own any more go to their new
        owners now, in their order, before anything published after the change
        (``republish``: Links.republish), marked as sent again if they may have reached
        this node (which passes on what it reads of them, marked so too: the new owner
        takes each once).  A publish also for queues this node still owns keeps its place
        here for those; its confirm waits for both answers."""
        if not self._pending:
            return
        moving: list[tuple[list, list[str], bool]] = []
        for entry in self._pending:
            vhost, names = entry[3], entry[4]
            if owned_here(vhost, names):
                continue
            away = [n for n in names if not owned_here(vhost, [n])]
            sent = entry[6] or (self.session is not None and entry[0] <= self._wire_seq)
            moving.append((entry, away, sent))
        if not moving:
            return
        gone: set[int] = set()  # seqs of the publishes that leave this link altogether
        loop = asyncio.get_event_loop()
        for entry, away, sent in moving:
            there: asyncio.Future[bool] = loop.create_future()
            if len(away) < len(entry[4]):
                # split: this node answers for the names it keeps, under the same seq
                here: asyncio.Future[bool] = loop.create_future()
                _answer(entry[1], all_settled([], [here, there]))
                entry[1] = here
                entry[4] = [n for n in entry[4] if n not in away]
                self._replace_queued(entry)
            else:
                gone.add(entry[0])
                self._pending_bytes -= entry[2]
                _answer(entry[1], all_settled([], [there]))
            try:
                republish(entry[3], away, entry[5], sent, there)
            except Exception:  # never leave a confirm unanswered
                log.exception("could not pass a publish on to the new owner of %s", away)
                if not there.done():
                    there.set_result(False)
        if gone:
            self._pending = deque(e for e in self._pending if e[0] not in gone)
            self._backlog = deque(item for item in self._backlog
                                  if item[1] != "publish" or item[2] not in gone)
        if not self._backlog and self._backlog_timer is not None:
            self._backlog_timer.cancel()
            self._backlog_timer = None
        self._release_if_below()

    def _replace_queued(self, entry: list) -> None:
        """A queued publish whose names changed: its frame in the backlog is made again."""
        for i, item in enumerate(self._backlog):
            if item[1] == "publish" and item[2] == entry[0]:
                self._backlog[i] = (_publish_frame(entry), "publish", entry[0])
                return

    # ------------------------------------------------------------------ publish
    def publish(self, vhost: str, names: list[str], message: Message, again: bool = False
                ) -> asyncio.Future[bool]:
        """Enqueue ``message`` in the peer's queues ``names``; the future is True once they
        hold it durably (at once, for what is not stored), False when the owner did not
        take it (a confirm is then a nack).  A publish whose session ends before the
        answer is sent again (`_lost`, `reroute`); past `PUBLISH_WAIT` without an owner it
        is False.  ``again``: it was sent once before (passed on from another link).  It
        never fails: nobody need read it."""
        self._seq += 1
        seq = self._seq
        if message.pid is not None:  # passed on: it keeps the id it came with
            record = message.encode()
        else:
            record = message.record_with_pid(self._nonce + seq.to_bytes(8, "big"))
        loop = asyncio.get_event_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        # [seq, future, size, vhost, names, record, sent again, answer by (loop time)]
        entry = [seq, fut, len(record), vhost, names, record, again,
                 loop.time() + PUBLISH_WAIT]
        self._pending.append(entry)
        self._pending_bytes += len(record)
        self._send(_publish_frame(entry), "publish", seq)
        return fut

    def reply(self, vhost: str, key: str, message: Message) -> None:
        """A direct reply to a requester on the peer node (fire and forget, as a direct
        reply is: it is dropped if the requester is gone)."""
        self._send(wire.message((REPLY, vhost, key), message.encode()), "reply", 0)

    @property
    def full(self) -> bool:
        """The window is full: the caller should stop reading its publishers (`hold`)."""
        return len(self._pending) >= WINDOW or self._pending_bytes >= WINDOW_BYTES

    def hold(self, conn: Any) -> None:
        """Stop reading ``conn`` (a publisher) until the window is half answered."""
        if conn not in self._held:
            self._held.add(conn)
            conn.hold_reading("link")

    def _release_if_below(self) -> None:
        if self._held and len(self._pending) <= WINDOW // 2 \
                and self._pending_bytes <= WINDOW_BYTES // 2:
            self._release_held()

    def _release_held(self) -> None:
        held, self._held = self._held, set()
        for conn in held:
            conn.release_reading("link")

    def _settle_one(self, ok: bool, why: str = "") -> None:
        _seq, fut, size = self._pending.popleft()[:3]
        self._pending_bytes -= size
        if not ok and why:
            log.debug("publish %d not taken: %s", _seq, why)
        if not fut.done():
            fut.set_result(ok)

    def _nack_overdue(self, why: str, sent_only: bool = False) -> float:
        """Nack the oldest publishes whose answer-by time has passed (only those already
        on the wire with ``sent_only``); the loop time it used."""
        now = asyncio.get_event_loop().time()
        pending = self._pending
        while pending and pending[0][7] <= now and (not sent_only
                                                     or pending[0][0] <= self._wire_seq):
            self._settle_one(False, why)
        return now

    def _confirmed(self, upto: int, ok: bool) -> None:
        pending = self._pending
        why = "" if ok else f"node {self.peer} did not take the message"
        while pending and pending[0][0] <= upto:
            self._settle_one(ok, why)
        self._release_if_below()

    # ------------------------------------------------------------------ requests
    def request(self, message: dict[str, Any], again: bool = False) -> asyncio.Future[Any]:
        """Ask the owner; ``again``: the request is idempotent, and asked again on the
        next session when the one that carried it ends before the answer."""
        self._rid += 1
        rid = self._rid
        fut: asyncio.Future[Any] = asyncio.get_event_loop().create_future()
        frame = wire.control({**message, "rid": rid})
        # [future, the generation it went out in (None: queued), the frame to send again]
        self._requests[rid] = [fut, self.generation if self.session is not None else None,
                               frame if again else None]
        self._send(frame, "request", rid)
        return fut

    async def counts(self, vhost: str, queue: str) -> tuple[int, int]:
        r = await self.request({"t": "counts", "vhost": vhost, "queue": queue}, again=True)
        return int(r["message_count"]), int(r["consumer_count"])

    async def purge(self, vhost: str, queue: str) -> int:
        r = await self.request({"t": "purge", "vhost": vhost, "queue": queue})
        return int(r["message_count"])

    async def get(self, vhost: str, queue: str, no_ack: bool
                  ) -> tuple[Message | None, int, bool, int, int]:
        """basic.get at the owner: (message or None, delivery id, redelivered,
        message_count, generation)."""
        gen = self.generation
        r = await self.request({"t": "get", "vhost": vhost, "queue": queue,
                                "no_ack": no_ack})
        if r.get("empty"):
            return None, 0, False, int(r["message_count"]), gen
        return r["message"], r["did"], r["redelivered"], r["message_count"], r["gen"]

    # ------------------------------------------------------------------ consumers
    def consume(self, vhost: str, queue: str, tag: str, prefetch: int, no_ack: bool,
                exclusive: bool, arguments: dict, sink: DeliverySink, credit: int = CREDIT
                ) -> tuple[RemoteConsumer, asyncio.Future[Any]]:
        """Subscribe at the owner; the future resolves once it has (its deliveries, which
        may follow at once, go to ``sink``), or fails with the owner's `LinkError`."""
        self._cid += 1
        rc = RemoteConsumer(self._cid, vhost, queue, tag, prefetch, no_ack, exclusive,
                            arguments, sink, credit)
        rc.link = self
        self.consumers[rc.cid] = rc
        return rc, self._subscribe(rc)

    def _subscribe(self, rc: RemoteConsumer, resubscribe: bool = False) -> asyncio.Future[Any]:
        rc.outstanding = rc.credit
        fut = self.request({"t": "consume", "vhost": rc.vhost, "queue": rc.queue,
                            "cid": rc.cid, "tag": rc.tag, "prefetch": rc.prefetch,
                            "no_ack": rc.no_ack, "exclusive": rc.exclusive,
                            "arguments": _plain(rc.arguments), "credit": rc.credit},
                           again=not resubscribe)

        def answered(f: asyncio.Future) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if exc is None:
                rc.active = True
                return
            if resubscribe and isinstance(exc, LinkLost) and not self.closed:
                return  # the next session subscribes it again
            self.consumers.pop(rc.cid, None)
            if resubscribe:  # that node has not the queue any more: moved, or deleted
                rc.sink.cancelled(rc, moved=True)
        fut.add_done_callback(answered)
        return fut

    def end(self, rc: RemoteConsumer) -> asyncio.Future[Any]:
        """Cancel ``rc`` at the owner and hear when it has: deliveries until then still go
        to its sink (they precede the answer on the link)."""
        if rc.cid not in self.consumers or self.session is None:
            self.consumers.pop(rc.cid, None)
            done: asyncio.Future[Any] = asyncio.get_event_loop().create_future()
            done.set_result(None)
            return done
        fut = self.request({"t": "cancel", "cid": rc.cid}, again=True)
        fut.add_done_callback(lambda _f: self.consumers.pop(rc.cid, None))
        return fut

    def forget(self, rc: RemoteConsumer) -> None:
        """Stop holding ``rc`` here without telling the owner (it forgot it already)."""
        self.consumers.pop(rc.cid, None)

    def cancel(self, rc: RemoteConsumer) -> None:
        if self.consumers.pop(rc.cid, None) is not None and self.session is not None:
            self._out_frame(wire.control({"t": "cancel", "cid": rc.cid}))

    def credit(self, rc: RemoteConsumer, n: int) -> None:
        """Let the owner send ``n`` more deliveries to ``rc``."""
        if self.session is None or rc.cid not in self.consumers:
            return
        rc.outstanding += n
        self._credit_out[rc.cid] = self._credit_out.get(rc.cid, 0) + n
        self._schedule()

    def settle(self, op: str, generation: int, did: int) -> None:
        """ack / reject / requeue the owner's delivery ``did``: dropped when the session it
        came on is gone (the owner requeued it already)."""
        if generation != self.generation or self.session is None:
            return
        if self._settle_op != op:
            if self._settle_op is not None:
                self._emit_settles()
            self._settle_op = op
        self._settle_ids.append(did)
        self._schedule()

    # ------------------------------------------------------------------ input
    def _frame(self, session: _ClientSession, kind: int, body: bytes) -> None:
        if session is not self.session:
            return
        if kind == wire.MESSAGE:
            meta, record = session.decode_message(body)
            if meta[0] == DELIVER:
                self._delivery(int(meta[1]), int(meta[2]), bool(meta[3]), record)
            elif meta[0] == GET_OK:
                req = self._requests.pop(int(meta[1]), None)
                if req is not None and not req[0].done():
                    req[0].set_result({"message": Message.decode(record), "did": int(meta[2]),
                                       "redelivered": bool(meta[3]),
                                       "message_count": int(meta[4]),
                                       "gen": self.generation})
            else:
                raise wire.WireError("unexpected message frame")
            return
        if kind != wire.CONTROL:
            raise wire.WireError(f"unexpected frame kind {kind}")
        m = session.decode_control(body)
        t = m.get("t")
        if t == "hb":
            return
        if t == "ack" or t == "nack":
            self._confirmed(int(m["upto"]), t == "ack")
        elif t == "reply" or t == "error":
            req = self._requests.pop(int(m.get("rid", 0)), None)
            if req is None or req[0].done():
                return
            if t == "reply":
                req[0].set_result(m)
            else:
                req[0].set_exception(LinkError(int(m.get("code", errors.INTERNAL_ERROR)),
                                               str(m.get("text", ""))))
        elif t == "cancelled":
            rc = self.consumers.pop(int(m.get("cid", 0)), None)
            if rc is not None:
                rc.sink.cancelled(rc, bool(m.get("moved")))
        else:
            raise wire.WireError(f"unknown queue-link message {t!r}")

    def _delivery(self, cid: int, did: int, redelivered: bool, record: bytes) -> None:
        rc = self.consumers.get(cid)
        if rc is None:
            # cancelled here while the owner was delivering: give it back at once, and end
            # that consumer there too (a subscription whose answer was lost, or one made
            # again after its channel closed, must not hold messages for nobody)
            self.settle("requeue", self.generation, did)
            if cid not in self._orphans and self.session is not None:
                self._orphans.add(cid)
                self._out_frame(wire.control({"t": "cancel", "cid": cid}))
            return
        rc.outstanding -= 1
        rc.sink.delivery(rc, did, redelivered, Message.decode(record))


def _answer(out: asyncio.Future[bool], settled: asyncio.Future[None], ok: bool = True
            ) -> None:
    """``out`` (a publish's answer) is ``ok`` once ``settled`` (outcome.all_settled)
    succeeds, False if it fails."""
    def done(f: asyncio.Future[None]) -> None:
        if not out.done():
            out.set_result(ok and not f.cancelled() and f.exception() is None)
    settled.add_done_callback(done)


def _publish_frame(entry: list) -> bytes:
    """A pending publish's frame: [PUBLISH, seq, vhost, names(, 1 when sent again)]."""
    seq, _fut, _size, vhost, names, record, again, _by = entry
    meta = (PUBLISH, seq, vhost, names, 1) if again else (PUBLISH, seq, vhost, names)
    return wire.message(meta, record)


def _plain(args: dict) -> dict:
    """Consumer arguments as msgpack takes them (AMQP field values decoded already; typed
    integers are ints)."""
    out = {}
    for k, v in args.items():
        if isinstance(v, (bool, int, float, str, bytes)) or v is None:
            out[str(k)] = v
        else:
            out[str(k)] = str(v)
    return out


class Links:
    """This node's queue links, one per peer node, opened on first use."""

    def __init__(self, me: str, address_of: Callable[[str], str | None],
                 connect: Connect, applied: Callable[[], int] = lambda: 0,
                 vhosts: Callable[[], dict[str, Any]] = dict) -> None:
        self.me = me
        self._applied = applied
        self._vhosts = vhosts  # the runtime's vhosts by name (runtime.vhosts)
        self._address_of = address_of  # a node's cluster port address (its record's)
        self._connect = connect
        self._links: dict[str, LinkClient] = {}

    def to(self, node: str) -> LinkClient:
        link = self._links.get(node)
        if link is None:
            link = self._links[node] = LinkClient(
                self.me, node, lambda: self._address_of(node), self._connect,
                applied=self._applied)
            link.on_lost = functools.partial(self._reroute, link)
            link.start()
        return link

    def close(self) -> None:
        links, self._links = self._links, {}
        for link in links.values():
            link.close()

    def forget(self, node: str) -> None:
        """``node`` left the cluster: its link closes (what still waits for it fails) and
        is not tried again."""
        link = self._links.pop(node, None)
        if link is not None:
            link.close()

    # ------------------------------------------------------------------ owners change
    def owners_changed(self) -> None:
        """Shards changed owner (a Raft event, applied here just now): publishes waiting
        for a node that no longer owns their queues go to the new owners at once."""
        for link in list(self._links.values()):
            self._reroute(link)

    def _reroute(self, link: LinkClient) -> None:
        link.reroute(functools.partial(self._owned_by, link.peer), self.republish)

    def _owned_by(self, peer: str, vhost: str, names: list[str]) -> bool:
        vh = self._vhosts().get(vhost)
        for name in names:
            q = vh.queues.get(name) if vh is not None else None
            if q is None or not getattr(q, "remote", False) or q.owner != peer:
                return False
        return True

    def republish(self, vhost: str, names: list[str], record: bytes, again: bool,
                  fut: asyncio.Future[bool]) -> None:
        """Publish ``record`` (a link publish, its id inside) to queues ``names`` where
        they are now: this node's own, or their owners' over their links; ``fut`` gets
        the answer (False when a queue is gone or refused it)."""
        vh = self._vhosts().get(vhost)
        msg = Message.decode(record)
        local: list[Queue] = []
        remote: dict[LinkClient, list[str]] = {}
        ok = True
        for name in names:
            q = vh.queues.get(name) if vh is not None else None
            if q is None or getattr(q, "deleted", False):
                ok = False
            elif getattr(q, "remote", False):
                try:
                    remote.setdefault(q.link, []).append(name)
                except LookupError:
                    ok = False
            else:
                local.append(q)
        flushes: list[asyncio.Future] = []
        if local:
            msg._record = record
            taken, settled = publish_once(local, msg, again)
            ok = ok and taken
            if settled is not None:
                flushes.append(settled)
        answers = [link.publish(vhost, there, msg, again) for link, there in remote.items()]
        if not flushes and not answers:
            fut.set_result(ok)
            return
        _answer(fut, all_settled(flushes, answers), ok)
