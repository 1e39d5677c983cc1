"""One AMQP channel, what its methods mean: the classes channel, exchange, queue, basic,
confirm and tx, consumers, unacknowledged deliveries, publisher confirms and transactions.

The frames are the protocol core's (`protocol.py`): it opens and closes channels and
assembles each message, and the events it makes arrive here (`feed`).  A handler either
finishes at once (the hot path: publish, ack, deliver) or returns a coroutine (definition
changes that go through Raft), in which case later events on this channel wait in a
backlog so that the client sees replies in order.  Errors are raised as `AMQPError` and
turned into channel.close / connection.close by the connection, in one place."""

from __future__ import annotations

import asyncio
import base64
import copy
import functools
import os
import struct
from collections import deque
from time import monotonic as _monotonic
from typing import Any, Callable, Protocol

from node.amqp import errors, spec
from node.amqp.errors import AMQPConnectionError, AMQPError, ChannelError
from node.amqp.events import ChannelCloseReceived, ContentRejected, Event, Publish
from node.amqp.message import (
    FLAG_EXPIRATION,
    FLAG_REPLY_TO,
    Message,
    expiration_error,
)
from node.amqp.states import CH_CLOSING
from node.amqp.states import OPEN as CONN_OPEN
from node.exchanges.base import Binding, Destination
from node.queues import types
from node.queues.consumer import Consumer
from node.queues.entry import QueueEntry
from node.queues.outcome import PublishOutcome, Rejected, all_settled
from node.queues.queue import Queue
from node.read_models import ChannelStats
from node.shards.link import LinkError
from node.shards.remote_queue import RemoteQueue, Superseded

_DELIVER_HEAD = struct.Struct(">HH")
_QWORD = struct.Struct(">Q")

OPEN, CLOSING = "open", "closing"
# Memory a client can make a channel hold: frames that wait while a definition
# change is in Raft, and the message store's uncommitted bytes (a slow disk), before the
# connection is no longer read; what a direct reply-to client that never reads may have
# queued before further replies to it are dropped (they are no-ack: RabbitMQ gives no
# delivery guarantee for them either).
BACKLOG_MAX_BYTES = 1 << 20
REPLY_TO_MAX_BUFFERED = 4 << 20
REPLY_TO = "amq.rabbitmq.reply-to"
REPLY_TO_PREFIX = "amq.rabbitmq.reply-to."


class ChannelConnection(Protocol):
    """What a channel uses of its connection (node/clients/connection.py's AMQPConnection,
    which imports this module: the channel names only what it needs)."""

    broker: Any
    core: Any
    loop: asyncio.AbstractEventLoop
    transport: Any
    name: str
    user: str
    vhost: Any
    capabilities: dict
    channels: dict[int, Any]
    exclusive_queues: set[str]
    @property
    def closing(self) -> bool: ...
    paused: bool
    publisher: bool
    read_holds: set[str]
    send_method: Callable[..., None]
    send_content: Callable[..., None]

    log: Any  # the connection's logger

    def flush(self) -> None: ...
    def spawn(self, coro: Any) -> None: ...
    def handle_error(self, err: Any, ch: int) -> None: ...
    def hold_reading(self, reason: str) -> None: ...
    def release_reading(self, reason: str) -> None: ...
    def flow_pause(self, queue: Any) -> None: ...
    def block(self, alarms: set[str]) -> None: ...
    def channel_closed(self, number: int) -> None: ...


def new_name(prefix: str) -> str:
    return prefix + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


def reply_token(node: str) -> str:
    """A node's name as the first part of a direct reply key (no "." in it)."""
    return base64.urlsafe_b64encode(node.encode()).decode().rstrip("=")


def reply_node(key: str) -> str | None:
    """The node a direct reply key names (None for a key without one)."""
    token, sep, _ = key.partition(".")
    if not sep:
        return None
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None


class Channel:
    def __init__(self, conn: ChannelConnection, number: int) -> None:
        self.conn = conn
        self.number = number
        self.broker = conn.broker
        self.counters = conn.broker.counters  # the node's, incremented on the hot path
        self.vhost = conn.vhost
        self.user = conn.user
        # the protocol core's view of this channel: its state is read from there
        self._frames = conn.core.channels.get(number)
        self.consumers: dict[str, Consumer] = {}
        self.unacked: dict[int, tuple[Queue, QueueEntry, Consumer | None]] = {}
        self.delivery_tag = 0
        self.prefetch_count = 0  # for consumers started after basic.qos(global=false)
        self.global_prefetch = 0  # basic.qos(global=true): the whole channel
        self.confirm = False
        self.publish_tag = 0
        self._confirms: deque[list] = deque()  # [tag, done, ok] in publish order
        self._confirm_flush_scheduled = False
        self._flush_future: asyncio.Future | None = None
        self._flush_future_entries: list[list] = []
        self._flush_failure: str | None = None  # the last one logged (once, not per batch)
        self.tx: list[Callable[[], Any]] | None = None
        self.tx_taken: list[tuple[int, tuple]] = []
        self.last_queue = ""
        self.reply_consumer: Consumer | None = None  # direct reply-to (amq.rabbitmq.reply-to)
        self.reply_key = ""
        self._held_cancels: list[str] | None = None  # while this channel deletes a queue
        # an earlier method is still going through Raft: later events wait in the backlog
        self.busy = False
        self._backlog: deque[Event] = deque()
        self._backlog_bytes = 0
        self._allowed: dict[tuple[str, str, str], bool] = {}
        self._deliver_prefix = _DELIVER_HEAD.pack(60, 60)
        self.stats_publish = 0
        self.stats_deliver = 0
        self.stats_ack = 0
        # deliveries that await an ack (basic.consume and basic.get with manual ack):
        # rabbitmq_channel_messages_delivered_ack_total
        self.stats_deliver_manual_ack = 0
        self.tx_publishes = 0  # publishes of the open transaction (messages_uncommitted)

    # ------------------------------------------------------------------------------
    # frames in
    # ------------------------------------------------------------------------------
    def feed(self, event: Any) -> None:  # one of events.py's
        """An event of the protocol core for this channel: a method (MethodReceived), a
        whole message (Publish), the client's channel.close, a refused message."""
        if self.busy:
            self._backlog.append(event)
            self._backlog_bytes += _size(event)
            if self._backlog_bytes > BACKLOG_MAX_BYTES:
                self.conn.hold_reading(self._backlog_hold)
            return
        kind = type(event)
        if kind is Publish:
            self.on_publish(event)
        elif kind is ChannelCloseReceived:
            self.teardown()
            self.conn.core.channel_close_ok(self.number)
            self.conn.channel_closed(self.number)
        elif kind is ContentRejected:
            raise event.error
        else:
            method = event.method
            try:
                result = self.handle_method(method)
            except AMQPError as e:
                if not e.class_id:  # the reply names the method that failed
                    e.class_id, e.method_id = method.CLASS_ID, method.METHOD_ID
                raise
            if result is not None:
                self._run_async(result, method)

    @property
    def _backlog_hold(self) -> str:
        return f"backlog:{self.number}"

    def _backlog_drained(self) -> None:
        if not self._backlog:
            self._backlog_bytes = 0
            self.conn.release_reading(self._backlog_hold)

    def _run_async(self, coro: Any, method: Any) -> None:
        self.busy = True

        async def run() -> None:
            try:
                await coro
            except AMQPError as e:
                if not e.class_id:
                    e.class_id, e.method_id = method.CLASS_ID, method.METHOD_ID
                self.busy = False
                self._backlog.clear()
                self._backlog_drained()
                self.conn.handle_error(e, self.number)
                return
            except asyncio.CancelledError:
                self.busy = False  # the connection is going away
                raise
            except Exception as e:  # a bug must not take the connection's other channels down
                self.conn.log.exception("channel %d: %s failed", self.number, method.NAME)
                self.busy = False
                self._backlog.clear()
                self._backlog_drained()
                self.conn.handle_error(ChannelError(errors.INTERNAL_ERROR, str(e),
                                                    method.CLASS_ID, method.METHOD_ID),
                                       self.number)
                return
            self.busy = False
            while (self._backlog and not self.busy and self.state == OPEN
                   and self.number in self.conn.channels):
                event = self._backlog.popleft()
                self._backlog_bytes -= _size(event)
                try:
                    self.feed(event)
                except AMQPError as e:
                    self._backlog.clear()
                    self._backlog_drained()
                    self.conn.handle_error(e, self.number)
                    return
            self._backlog_drained()
            self.conn.flush()

        self.conn.spawn(run())

    def handle_method(self, m: Any) -> Any:
        handler = _HANDLERS.get(type(m))
        if handler is None:
            raise AMQPConnectionError(errors.COMMAND_INVALID,
                                   f"method {m.NAME} is not valid from a client on a channel",
                                   m.CLASS_ID, m.METHOD_ID)
        return handler(self, m)

    # ------------------------------------------------------------------------------
    # permissions
    # ------------------------------------------------------------------------------
    def check(self, perm: str, kind: str, name: str) -> None:
        key = (perm, kind, name)
        ok = self._allowed.get(key)
        if ok is None:
            ok = self.broker.access.permitted(self.user, self.vhost.name, perm, name)
            self._allowed[key] = ok
        if not ok:
            raise errors.access_refused("", kind, name, self.vhost.name, self.user)

    # ------------------------------------------------------------------------------
    # channel class
    # ------------------------------------------------------------------------------
    def on_channel_flow(self, m: spec.ChannelFlow) -> None:
        if not m.active:
            raise AMQPConnectionError(errors.NOT_IMPLEMENTED, "active=false", 20, 20)
        self.conn.send_method(self.number, spec.ChannelFlowOk(active=True))

    def on_channel_flow_ok(self, m: spec.ChannelFlowOk) -> None:
        return None

    @property
    def state(self) -> str:
        """OPEN, or CLOSING once channel.close went to the client (the core's state)."""
        frames = self._frames
        return CLOSING if frames is not None and frames.state is CH_CLOSING else OPEN

    def server_close(self, err: AMQPError) -> None:
        """Close this channel because of an error (the connection's handle_error decides;
        the protocol core sends channel.close)."""
        self.teardown()
        self._backlog.clear()
        self._backlog_drained()
        self.conn.core.close_channel(self.number, err)

    def teardown(self) -> None:
        """Release consumers and requeue unacknowledged messages (channel or connection end)."""
        if self.reply_consumer is not None:
            self._end_direct_reply()
        for c in list(self.consumers.values()):
            c.queue.remove_consumer(c)
        self.consumers.clear()
        self._requeue_all(ending=True)
        # confirms that never resolved are dropped with the channel, as in RabbitMQ
        self._confirms.clear()

    def _requeue_all(self, ending: bool = False) -> None:
        """Requeue what is unacknowledged: on basic.recover, or (ending) when the channel
        goes, when the acks of an uncommitted transaction never happened either."""
        if ending and self.tx_taken:
            self.unacked.update(self.tx_taken)
            self.tx_taken = []
            self.tx = [] if self.tx is not None else None
        if not self.unacked:
            return
        by_queue: dict[Queue, list] = {}
        # requeue in delivery order so the queue restores its original order
        for q, entry, consumer in self.unacked.values():
            by_queue.setdefault(q, []).append((entry, consumer))
        self.unacked.clear()
        for q, items in by_queue.items():
            q.requeue(items)

    # ------------------------------------------------------------------------------
    # exchange class
    # ------------------------------------------------------------------------------
    def on_exchange_declare(self, m: spec.ExchangeDeclare) -> Any:
        name = m.exchange
        vh = self.vhost
        if m.passive:
            if name == "":
                raise _default_exchange()
            if name not in vh.exchanges:
                raise errors.not_found("exchange", name, vh.name)
            if not m.nowait:
                self.conn.send_method(self.number, spec.ExchangeDeclareOk())
            return None
        if name == "":
            raise _default_exchange()
        self.check("configure", "exchange", name)
        args = m.arguments or {}
        existing = vh.exchanges.get(name)
        if existing is not None:
            self.broker.definitions.check_exchange_equivalent(existing, m.type, m.durable, m.auto_delete,
                                                  m.internal, args)
            if not m.nowait:
                self.conn.send_method(self.number, spec.ExchangeDeclareOk())
            return None
        if m.type not in self.broker.runtime.exchange_types:
            raise AMQPConnectionError(errors.COMMAND_INVALID, f"unknown exchange type '{m.type}'")
        if name.startswith("amq."):
            raise ChannelError(errors.ACCESS_REFUSED,
                               f"exchange name '{name}' contains reserved prefix 'amq.*'")

        async def declare() -> None:
            await self.broker.definitions.declare_exchange(vh, name, m.type, m.durable, m.auto_delete,
                                               m.internal, args)
            if not m.nowait:
                self.conn.send_method(self.number, spec.ExchangeDeclareOk())
        return declare()

    def on_exchange_delete(self, m: spec.ExchangeDelete) -> Any:
        name = m.exchange
        vh = self.vhost
        if name == "":
            raise _default_exchange()
        if name.startswith("amq."):  # refused whether it exists or not, as in RabbitMQ
            raise ChannelError(errors.ACCESS_REFUSED,
                               f"deletion of system {errors.resource_text('exchange', name, vh.name)} "
                               f"not allowed")
        self.check("configure", "exchange", name)

        async def delete() -> None:
            await self.broker.definitions.delete_exchange(vh, name, m.if_unused)
            if not m.nowait:
                self.conn.send_method(self.number, spec.ExchangeDeleteOk())
        return delete()

    def _exchange_binding(self, m: Any, bind: bool) -> Any:
        vh = self.vhost
        if m.source == "" or m.destination == "":
            raise _default_exchange()
        self.check("write", "exchange", m.destination)
        self.check("read", "exchange", m.source)
        for n in (m.source, m.destination):
            if n not in vh.exchanges and bind:
                raise errors.not_found("exchange", n, vh.name)
        dest = Destination("exchange", m.destination)
        ok = spec.ExchangeBindOk() if bind else spec.ExchangeUnbindOk()

        async def run() -> None:
            if bind:
                await self.broker.definitions.bind(vh, m.source, dest, m.routing_key, m.arguments or {})
            else:
                await self.broker.definitions.unbind(vh, m.source, dest, m.routing_key, m.arguments or {})
            if not m.nowait:
                self.conn.send_method(self.number, ok)
        return run()

    def on_exchange_bind(self, m: spec.ExchangeBind) -> Any:
        return self._exchange_binding(m, True)

    def on_exchange_unbind(self, m: spec.ExchangeUnbind) -> Any:
        return self._exchange_binding(m, False)

    # ------------------------------------------------------------------------------
    # queue class
    # ------------------------------------------------------------------------------
    def _queue_name(self, name: str) -> str:
        if name == "":
            if not self.last_queue:
                raise ChannelError(errors.NOT_FOUND, "no previously declared queue")
            return self.last_queue
        return name

    def _lookup_queue(self, name: str) -> Queue:
        q = self.vhost.queues.get(name)
        if q is None:
            raise errors.not_found("queue", name, self.vhost.name)
        if q.exclusive_owner is not None and q.exclusive_owner is not self.conn:
            raise errors.resource_locked(name, self.vhost.name)
        return q

    async def _again(self, m: Any) -> None:
        """Handle ``m`` again (the queue it named was rebuilt while it waited)."""
        result = self.handle_method(m)
        if result is not None:
            await result

    def _when_ready(self, wait: "asyncio.Future[None]", m: Any) -> Any:
        """Handle ``m`` again once the queue can answer with its counts (it was recovering,
        or its next batch was being read off the loop); the channel holds later methods."""
        async def later() -> None:
            await wait
            result = self.handle_method(m)
            if result is not None:
                await result
        return later()

    def on_queue_declare(self, m: spec.QueueDeclare) -> Any:
        vh = self.vhost
        name = m.queue
        if m.passive and name == REPLY_TO:
            if not m.nowait:
                self.conn.send_method(self.number, spec.QueueDeclareOk(
                    queue=REPLY_TO, message_count=0, consumer_count=0))
            return None
        if m.passive:
            q = self._lookup_queue(self._queue_name(name))
            if isinstance(q, RemoteQueue):
                return self._remote_declare_ok(q, m)
            if q.recovering and (wait := q.wait_for()) is not None:
                return self._when_ready(wait, m)
            self.last_queue = q.name
            if not m.nowait:
                self.conn.send_method(self.number, spec.QueueDeclareOk(
                    queue=q.name, message_count=q.message_count,
                    consumer_count=q.consumer_count))
            return None
        args = types.with_default_type(m.arguments or {}, self.broker.definitions.default_queue_type(vh.name),
                                       m.durable, m.exclusive, m.auto_delete)
        if name == "":
            types.check_server_named(args)
            name = new_name("amq.gen-")
        self.check("configure", "queue", name)
        existing = vh.queues.get(name)
        if existing is not None:
            # RabbitMQ checks exclusivity strictly first: the declared owner (this connection
            # if exclusive, else none) must be the queue's, whoever redeclares it
            if existing.exclusive_owner is not (self.conn if m.exclusive else None):
                raise errors.resource_locked(name, vh.name)
            self.broker.definitions.check_queue_equivalent(existing, m.durable, m.exclusive, m.auto_delete,
                                               args)
            if isinstance(existing, RemoteQueue):
                return self._remote_declare_ok(existing, m)
            if existing.recovering and (wait := existing.wait_for()) is not None:
                return self._when_ready(wait, m)
            existing.touch()
            self.last_queue = name
            if not m.nowait:
                self.conn.send_method(self.number, spec.QueueDeclareOk(
                    queue=name, message_count=existing.message_count,
                    consumer_count=existing.consumer_count))
            return None
        if name.startswith("amq.") and m.queue != "":
            raise ChannelError(errors.ACCESS_REFUSED,
                               f"queue name '{name}' contains reserved prefix 'amq.*'")
        self.broker.definitions.validate_queue_arguments(args, name, vh.name, m.durable, m.exclusive,
                                             m.auto_delete)

        async def declare() -> None:
            q = await self.broker.definitions.declare_queue(
                vh, name, m.durable, self.conn if m.exclusive else None, m.auto_delete, args)
            if m.exclusive:
                self.conn.exclusive_queues.add(q.name)
            self.last_queue = name
            if isinstance(q, RemoteQueue):  # on a shard another node owns
                try:
                    await _remote(q.counts(declared=True))
                except Superseded:  # its shard changed owner meanwhile: declared again
                    again = copy.copy(m)
                    again.queue = name  # a server-named queue keeps the name it was given
                    return await self._again(again)
            # a queue Raft had already (declared meanwhile, or built by a takeover) may
            # still be recovering: declare-ok reports what it holds, not 0
            while q.recovering and (wait := q.wait_for()) is not None:
                await wait
            if not m.nowait:
                self.conn.send_method(self.number, spec.QueueDeclareOk(
                    queue=name, message_count=q.message_count, consumer_count=q.consumer_count))
        return declare()

    def _remote_declare_ok(self, q: RemoteQueue, m: spec.QueueDeclare) -> Any:
        """declare-ok for a queue another node owns: its counts come from there."""
        async def answer() -> None:
            try:
                messages, consumers = await _remote(q.counts())
            except Superseded:
                return await self._again(m)
            self.last_queue = q.name
            if not m.nowait:
                self.conn.send_method(self.number, spec.QueueDeclareOk(
                    queue=q.name, message_count=messages, consumer_count=consumers))
        return answer()

    def on_queue_bind(self, m: spec.QueueBind) -> Any:
        return self._queue_binding(m, True)

    def on_queue_unbind(self, m: spec.QueueUnbind) -> Any:
        return self._queue_binding(m, False)

    def _queue_binding(self, m: Any, bind: bool) -> Any:
        vh = self.vhost
        qname = self._queue_name(m.queue)
        routing_key = m.routing_key
        if m.queue == "" and routing_key == "":
            routing_key = qname  # spec: empty key and queue name bind with the queue's name
        if m.exchange == "":
            raise _default_exchange()
        self.check("write", "queue", qname)
        self.check("read", "exchange", m.exchange)
        dest = Destination("queue", qname)
        if bind:
            # as RabbitMQ: both ends must exist (exchange first), then exclusivity
            if m.exchange not in vh.exchanges:
                raise errors.not_found("exchange", m.exchange, vh.name)
            self._lookup_queue(qname)
        else:
            # unbind is idempotent: only an existing binding is checked for exclusivity
            q = vh.queues.get(qname)
            ex = vh.exchanges.get(m.exchange)
            if (q is not None and ex is not None and q.exclusive_owner is not None
                    and ex.has_binding(Binding(m.exchange, dest, routing_key,
                                               m.arguments or {}))):
                self._lookup_queue(qname)
        nowait = getattr(m, "nowait", False)

        async def run() -> None:
            if bind:
                await self.broker.definitions.bind(vh, m.exchange, dest, routing_key, m.arguments or {})
                if not nowait:
                    self.conn.send_method(self.number, spec.QueueBindOk())
            else:
                await self.broker.definitions.unbind(vh, m.exchange, dest, routing_key, m.arguments or {})
                self.conn.send_method(self.number, spec.QueueUnbindOk())
        return run()

    def on_queue_purge(self, m: spec.QueuePurge) -> Any:
        name = self._queue_name(m.queue)
        self.check("read", "queue", name)
        q = self._lookup_queue(name)
        if isinstance(q, RemoteQueue):
            async def purge(q: RemoteQueue) -> None:
                try:
                    n = await _remote(q.purge_remote())
                except Superseded:
                    return await self._again(m)
                if not m.nowait:
                    self.conn.send_method(self.number, spec.QueuePurgeOk(message_count=n))
            return purge(q)
        if q.recovering and (wait := q.wait_for()) is not None:
            return self._when_ready(wait, m)
        n = q.purge()
        if not m.nowait:
            self.conn.send_method(self.number, spec.QueuePurgeOk(message_count=n))
        return None

    def on_queue_delete(self, m: spec.QueueDelete) -> Any:
        vh = self.vhost
        name = self._queue_name(m.queue)
        self.check("configure", "queue", name)
        q = vh.queues.get(name)
        if q is None:
            if not m.nowait:
                self.conn.send_method(self.number, spec.QueueDeleteOk(message_count=0))
            return None
        self._lookup_queue(name)
        if q.recovering and (wait := q.wait_for()) is not None:
            return self._when_ready(wait, m)
        remote = isinstance(q, RemoteQueue)
        if not remote:
            self._check_delete(q, q.message_count, len(q.consumers), m)

        async def delete() -> None:
            if isinstance(q, RemoteQueue):  # its counts are the owner's
                try:
                    messages, consumers = await _remote(q.counts())
                except Superseded:
                    return await self._again(m)
                self._check_delete(q, messages, consumers, m)
            n = q.message_count
            # RabbitMQ answers delete-ok before it cancels this channel's consumers of the
            # queue (py-amqp/kombu fail on the other order)
            self._held_cancels = []
            try:
                await self.broker.definitions.delete_queue(vh, q)
                if not m.nowait:
                    self.conn.send_method(self.number, spec.QueueDeleteOk(message_count=n))
            finally:
                held, self._held_cancels = self._held_cancels, None
                for tag in held:
                    self.conn.send_method(self.number, spec.BasicCancel(consumer_tag=tag,
                                                                        nowait=True))
        return delete()

    def _check_delete(self, q: Any, messages: int, consumers: int,
                      m: spec.QueueDelete) -> None:
        if m.if_unused and consumers:
            raise errors.precondition(f"{errors.resource_text('queue', q.name, q.vhost)} in use")
        if m.if_empty and messages:
            raise errors.precondition(
                f"{errors.resource_text('queue', q.name, q.vhost)} is not empty")

    # ------------------------------------------------------------------------------
    # basic class: publish
    # ------------------------------------------------------------------------------
    def on_publish(self, p: Publish) -> None:
        """basic.publish with its content, assembled by the protocol core (the connection
        calls this directly for a channel that is not busy: the per-message path)."""
        conn = self.conn
        if not conn.publisher:
            conn.publisher = True
        if conn.broker.resources is not None and conn.broker.resources.alarms:
            conn.block(conn.broker.resources.alarms)  # this publish passes, the next waits
        _ch, exchange, routing_key, mandatory, immediate, header, body = p
        vh = self.vhost
        ex = vh.exchanges.get(exchange)
        if ex is None:
            raise ChannelError(errors.NOT_FOUND,
                               f"no {errors.resource_text('exchange', exchange, vh.name)}", 60, 40)
        # RabbitMQ checks the default exchange under its name amq.default: without this, a
        # user with no write permission could publish to every queue of the vhost
        self.check("write", "exchange", exchange or "amq.default")
        if exchange != "":
            if ex.internal:
                raise ChannelError(errors.ACCESS_REFUSED,
                                   f"cannot publish to internal exchange '{exchange}' in "
                                   f"vhost '{vh.name}'", 60, 40)
        if immediate:
            raise AMQPConnectionError(errors.NOT_IMPLEMENTED, "immediate=true", 60, 40)
        msg = Message.from_publish(exchange, routing_key, header, body)
        if msg.flags & FLAG_EXPIRATION:
            _check_expiration(msg)
        self.stats_publish += 1
        if msg.flags & FLAG_REPLY_TO and b"amq.rabbitmq.reply-to" in header:
            msg = self._stamp_reply_to(msg)
        if exchange == "" and routing_key.startswith(REPLY_TO_PREFIX):
            self._publish_reply(msg, mandatory)
            return
        if self.tx is not None:
            self.tx.append(lambda: self._route(ex, msg, mandatory, None, settle=True))
            self.tx_publishes += 1
            return
        tag = 0
        if self.confirm:
            self.publish_tag += 1
            tag = self.publish_tag
            self.counters.received_confirm += 1
        self._route(ex, msg, mandatory, tag)

    def _route(self, ex: Any, msg: Message, mandatory: bool, tag: int | None,
               settle: bool = False) -> asyncio.Future[None] | None:
        """Publish into the vhost.  With a confirm ``tag`` (or ``settle``: tx.commit), the
        future the answer waits for when the message was written durably, else None."""
        outcome = self.vhost.publish(ex, msg)
        if outcome.flow:
            for q in outcome.flow:
                self.conn.flow_pause(q)
        if outcome.remote is not None:
            for link, _answer in outcome.remote:
                if link.full:  # the owner answers slower than we publish
                    link.hold(self.conn)
        if outcome.store is not None and outcome.backlogged() \
                and "store" not in self.conn.read_holds:
            # the disk is slower than this publisher: read it again once the store has
            # committed what is queued
            self.conn.hold_reading("store")
            self._await_store(outcome)
        if mandatory and not outcome.queues:
            self.counters.returned += 1  # rabbitmq_global_messages_unroutable_returned_total
            self.send_content(spec.BasicReturn(
                reply_code=errors.NO_ROUTE, reply_text="NO_ROUTE", exchange=msg.exchange,
                routing_key=msg.routing_key), msg)
        counters = self.counters
        counters.published += 1
        if not outcome.queues:
            counters.unroutable += 1
        settled = outcome.settled() if (tag or settle) and outcome.durable else None
        if tag:
            self._confirm_after(tag, settled, not outcome.rejected)
        return settled

    def _await_store(self, outcome: PublishOutcome) -> None:
        def caught_up(fut: asyncio.Future) -> None:
            if not fut.cancelled():
                fut.exception()  # a failed flush is reported by whoever confirms; read it
            if outcome.backlogged():
                self._await_store(outcome)  # what was read meanwhile is still queued
            else:
                self.conn.release_reading("store")
        store = outcome.store
        local = store.flush() if not outcome.more_stores else all_settled(
            [store.flush(), *(s.flush() for s in outcome.more_stores)])
        local.add_done_callback(caught_up)

    # --- publisher confirms -----------------------------------------------------------
    def _confirm_after(self, tag: int, settled: asyncio.Future[None] | None,
                       ok: bool = True) -> None:
        """Confirm ``tag`` once ``settled`` resolves (a durable write), else at once."""
        entry = [tag, settled is None, ok]
        self._confirms.append(entry)
        if settled is not None:
            fut = settled
            if fut is not self._flush_future:
                self._flush_future = fut
                entries: list[list] = []
                self._flush_future_entries = entries
                fut.add_done_callback(functools.partial(self._flushed, entries=entries))
            self._flush_future_entries.append(entry)
        elif not self._confirm_flush_scheduled:
            self._confirm_flush_scheduled = True
            self.conn.loop.call_soon(self._send_confirms)

    def _flushed(self, fut: asyncio.Future, *, entries: list[list]) -> None:
        ok = not fut.cancelled() and fut.exception() is None
        for e in entries:
            e[1] = True
            e[2] = e[2] and ok
        if not ok and (fut.cancelled() or not isinstance(fut.exception(), Rejected)):
            why = "cancelled" if fut.cancelled() else str(fut.exception())
            if why != self._flush_failure:  # a shard failing over fails many flushes alike
                self._flush_failure = why
                self.conn.log.warning("publishes nacked: the message store did not confirm "
                                      "them: %s", why)
        self._send_confirms()

    def _send_confirms(self) -> None:
        """Ack (or nack) the longest run of settled publishes, one frame per run."""
        self._confirm_flush_scheduled = False
        if self.state != OPEN or self.number not in self.conn.channels:
            return
        confirms = self._confirms
        while confirms and confirms[0][1]:
            ok = confirms[0][2]
            last = 0
            count = 0
            while confirms and confirms[0][1] and confirms[0][2] == ok:
                last = confirms.popleft()[0]
                count += 1
            if ok:
                self.counters.confirmed += count
                self.conn.send_method(self.number, spec.BasicAck(delivery_tag=last,
                                                                 multiple=count > 1))
            else:
                self.conn.send_method(self.number, spec.BasicNack(delivery_tag=last,
                                                                  multiple=count > 1,
                                                                  requeue=False))
        self.conn.flush()

    def on_confirm_select(self, m: spec.ConfirmSelect) -> None:
        if self.tx is not None:
            raise errors.precondition("cannot switch from tx to confirm mode")
        self.confirm = True
        if not m.nowait:
            self.conn.send_method(self.number, spec.ConfirmSelectOk())

    # ------------------------------------------------------------------------------
    # basic class: consume and deliver
    # ------------------------------------------------------------------------------
    def on_basic_qos(self, m: spec.BasicQos) -> None:
        if m.prefetch_size:
            raise AMQPConnectionError(errors.NOT_IMPLEMENTED,
                                   f"prefetch_size!=0 ({m.prefetch_size})", 60, 10)
        if m.global_:
            self.global_prefetch = m.prefetch_count
        else:
            self.prefetch_count = m.prefetch_count
        self.conn.send_method(self.number, spec.BasicQosOk())
        self._dispatch_all()

    def on_basic_consume(self, m: spec.BasicConsume) -> Any:
        if m.queue == REPLY_TO:
            self._consume_direct_reply(m)
            return
        name = self._queue_name(m.queue)
        self.check("read", "queue", name)
        q = self._lookup_queue(name)
        tag = m.consumer_tag or new_name("amq.ctag-")
        if tag in self.consumers:
            raise AMQPConnectionError(errors.NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'",
                                   60, 20)
        if q.exclusive_consumer is not None or (m.exclusive and q.consumers):
            raise ChannelError(errors.ACCESS_REFUSED,
                               f"{errors.resource_text('queue', name, self.vhost.name)} in exclusive use",
                               60, 20)
        c = Consumer(tag, q, self, m.no_ack, m.exclusive, self.prefetch_count, m.arguments)
        prio = (m.arguments or {}).get("x-priority")
        if prio is not None:
            if isinstance(prio, bool) or not isinstance(prio, int):
                raise errors.precondition(f"invalid arg 'x-priority' for consumer: expected "
                                          f"an integer, got '{prio}'")
            c.priority = prio
        if q.settings.single_active_consumer and m.exclusive:
            raise errors.precondition("exclusive consume is not allowed on a single active "
                                      f"consumer {errors.resource_text('queue', name, self.vhost.name)}")
        self.consumers[tag] = c
        if isinstance(q, RemoteQueue):
            return self._consume_remote(q, c, m)
        if not m.nowait:
            self.conn.send_method(self.number, spec.BasicConsumeOk(consumer_tag=tag))
        q.add_consumer(c)
        return None

    def _consume_remote(self, q: RemoteQueue, c: Consumer, m: spec.BasicConsume) -> Any:
        """Subscribe at the queue's owner; consume-ok once it accepted (its refusal, e.g.
        an exclusive consumer there, is this channel's error), then the deliveries."""
        answered = q.subscribe(c)

        async def consumed() -> None:
            try:
                await answered
            except LinkError as e:
                self.consumers.pop(c.tag, None)
                raise ChannelError(e.code, e.text) from None
            if not m.nowait:
                self.conn.send_method(self.number, spec.BasicConsumeOk(consumer_tag=c.tag))
            q.started(c)
        return consumed()

    def on_basic_cancel(self, m: spec.BasicCancel) -> Any:
        if self.reply_consumer is not None and m.consumer_tag == self.reply_consumer.tag:
            self._end_direct_reply()
        c = self.consumers.pop(m.consumer_tag, None)
        if c is not None and isinstance(c.queue, RemoteQueue):
            # cancel-ok once the owner has ended it: what it delivered before comes first
            # (and is this channel's to ack), nothing after
            ended = c.queue.unsubscribe(c)

            async def cancelled() -> None:
                await ended
                if not m.nowait:
                    self.conn.send_method(self.number,
                                          spec.BasicCancelOk(consumer_tag=m.consumer_tag))
            return cancelled()
        if not m.nowait:
            self.conn.send_method(self.number, spec.BasicCancelOk(consumer_tag=m.consumer_tag))
        if c is not None:
            c.queue.remove_consumer(c)
        return None

    def cancel_consumers_of(self, q: Queue) -> None:
        """The queue is gone: tell the client (consumer_cancel_notify) and forget them."""
        for tag, c in list(self.consumers.items()):
            if c.queue is q:
                del self.consumers[tag]
                if not self.conn.capabilities.get("consumer_cancel_notify"):
                    continue
                if self._held_cancels is not None:
                    self._held_cancels.append(tag)
                else:
                    self.conn.send_method(self.number, spec.BasicCancel(consumer_tag=tag,
                                                                        nowait=True))

    def check_ack_timeout(self, now: float, timeout: float) -> None:
        """Close the channel when its oldest unacknowledged delivery is older than the
        consumer timeout, as RabbitMQ does; its messages go back to their queues."""
        if self.state != OPEN or not self.unacked:
            return
        _q, entry, _c = next(iter(self.unacked.values()))
        if entry.delivered_at and now - entry.delivered_at > timeout:
            ms = int(timeout * 1000)
            self.conn.handle_error(errors.precondition(
                f"delivery acknowledgement on channel {self.number} timed out. Timeout value "
                f"used: {ms} ms. This timeout value can be configured, see consumers doc guide "
                f"to learn more"), self.number)

    # ConsumerOwner protocol, called by queues
    def can_deliver(self, consumer: Consumer) -> bool:
        # per delivery: the core's states read directly (`state`, `conn.closing` say the
        # same through properties)
        conn = self.conn
        frames = self._frames
        return (not conn.paused and conn.core.state is CONN_OPEN
                and (frames is None or frames.state is not CH_CLOSING)
                and (not self.global_prefetch or len(self.unacked) < self.global_prefetch))

    def deliver(self, consumer: Consumer, queue: Queue, entry: QueueEntry) -> None:
        self.delivery_tag += 1
        tag = self.delivery_tag
        if consumer.no_ack:
            self.counters.delivered_consume_auto_ack += 1
        else:
            self.unacked[tag] = (queue, entry, consumer)
            entry.delivered_at = _monotonic()
            self.counters.delivered_consume_manual_ack += 1
            self.stats_deliver_manual_ack += 1
        msg = entry.message
        payload = (self._deliver_prefix + consumer.tag_bytes + _QWORD.pack(tag)
                   + (b"\x01" if entry.redelivered else b"\x00") + msg.route_bytes)
        self.stats_deliver += 1
        self.conn.send_content(self.number, payload, msg.header, msg.body)

    def send_content(self, method: Any, msg: Message) -> None:
        self.conn.send_content(self.number, method.encode(), msg.header, msg.body)

    def on_basic_get(self, m: spec.BasicGet) -> Any:
        name = self._queue_name(m.queue)
        self.check("read", "queue", name)
        q = self._lookup_queue(name)
        if isinstance(q, RemoteQueue):
            async def get(q: RemoteQueue) -> None:
                try:
                    entry, count = await _remote(q.get_remote(m.no_ack))
                except Superseded:  # its shard changed owner meanwhile: ask it there
                    return await self._again(m)
                self._get_ok(q, entry, count, m)
            return get(q)
        wait = q.wait_for()
        if wait is not None:
            return self._when_ready(wait, m)
        entry = q.get()
        self._get_ok(q, entry, None, m)
        return None

    def _get_ok(self, q: Any, entry: QueueEntry | None, count: int | None,
                m: spec.BasicGet) -> None:
        """basic.get-ok (or get-empty) for what ``q`` handed out; ``count``: the message
        count the owner gave with it (a remote queue's), else the queue's own."""
        if entry is None:
            self.counters.get_empty += 1
            self.conn.send_method(self.number, spec.BasicGetEmpty())
            return None
        if m.no_ack:
            self.counters.delivered_get_auto_ack += 1
        else:
            self.counters.delivered_get_manual_ack += 1
            self.stats_deliver_manual_ack += 1
        self.delivery_tag += 1
        tag = self.delivery_tag
        if m.no_ack:
            q.discard(entry)
        else:
            q.taken(entry)
            entry.delivered_at = _monotonic()
            self.unacked[tag] = (q, entry, None)
        msg = entry.message
        self.send_content(spec.BasicGetOk(
            delivery_tag=tag, redelivered=entry.redelivered, exchange=msg.exchange,
            routing_key=msg.routing_key,
            message_count=q.message_count if count is None else count), msg)

    # --- acknowledgements -------------------------------------------------------------
    def _take(self, tag: int, multiple: bool) -> list[tuple[int, tuple]]:
        """Remove and return the (tag, (queue, entry, consumer)) pairs an ack/nack names."""
        unacked = self.unacked
        if multiple:
            if tag != 0 and tag not in unacked:  # as RabbitMQ: the tag itself must be there
                raise errors.precondition(f"unknown delivery tag {tag}")
            out = []
            for t in list(unacked):
                if tag != 0 and t > tag:
                    break
                out.append((t, unacked.pop(t)))
            return out
        item = unacked.pop(tag, None)
        if item is None:
            raise errors.precondition(f"unknown delivery tag {tag}")
        return [(tag, item)]

    def on_basic_ack(self, m: spec.BasicAck) -> None:
        self._reject(self._take(m.delivery_tag, m.multiple), requeue=False, dead=False)

    def on_basic_reject(self, m: spec.BasicReject) -> None:
        self._reject(self._take(m.delivery_tag, False), m.requeue)

    def on_basic_nack(self, m: spec.BasicNack) -> None:
        self._reject(self._take(m.delivery_tag, m.multiple), m.requeue)

    def _reject(self, taken: list, requeue: bool, dead: bool = True) -> None:
        """Settle what an ack (dead=False) or reject/nack (dead: unless requeued, the
        messages die and may be dead-lettered) names."""
        dead = dead and not requeue
        if self.tx is not None:
            # settled at tx.commit; tx.rollback puts them back as unacknowledged
            self.tx_taken.extend(taken)
            self.tx.append(lambda: self._settle([i for _, i in taken], requeue, dead))
            return
        self._settle([i for _, i in taken], requeue, dead)

    def _settle(self, items: list, requeue: bool = False, dead: bool = False) -> None:
        touched: set[Queue] = set()
        if requeue:
            by_queue: dict[Queue, list] = {}
            for q, entry, consumer in items:
                by_queue.setdefault(q, []).append((entry, consumer))
            for q, pairs in by_queue.items():
                q.requeue(pairs)
                touched.add(q)
        elif dead:
            for q, entry, consumer in items:
                q.reject(entry, consumer)
                touched.add(q)
        else:
            for q, entry, consumer in items:
                q.ack(entry, consumer)
                touched.add(q)
            self.stats_ack += len(items)
        if self.global_prefetch:
            self._dispatch_all()
        else:
            for q in touched:
                if q.consumers:
                    q.dispatch()

    def _dispatch_all(self) -> None:
        queues = {c.queue for c in self.consumers.values()}
        # remote queues first: under a global prefetch, what their owners already sent
        # waits for room here and must not be starved by a local queue taking it all
        for q in sorted(queues, key=lambda q: not isinstance(q, RemoteQueue)) \
                if len(queues) > 1 else queues:
            q.dispatch()

    def on_basic_recover(self, m: spec.BasicRecover) -> None:
        self._requeue_all()
        self.conn.send_method(self.number, spec.BasicRecoverOk())

    def on_basic_recover_async(self, m: Any) -> None:
        self._requeue_all()

    # ------------------------------------------------------------------------------
    # tx class
    # ------------------------------------------------------------------------------
    def on_tx_select(self, m: spec.TxSelect) -> None:
        if self.confirm:
            raise errors.precondition("cannot switch from confirm to tx mode")
        if self.tx is None:
            self.tx = []
        self.conn.send_method(self.number, spec.TxSelectOk())

    def on_tx_commit(self, m: spec.TxCommit) -> Any:
        if self.tx is None:
            raise errors.precondition("channel is not transactional")
        work, self.tx = self.tx, []
        self.tx_taken = []
        self.tx_publishes = 0
        settled: asyncio.Future[None] | None = None
        for fn in work:
            r = fn()
            if r is not None:
                settled = r  # the newest durable write: settled after every earlier one
        if settled is None:
            self.conn.send_method(self.number, spec.TxCommitOk())
            return None

        async def wait(fut: asyncio.Future[None]) -> None:
            # shielded: the flush future is shared by every waiter of this commit batch
            try:
                await asyncio.shield(fut)
            except Rejected:
                pass  # a queue's owner refused one (reject-publish): dropped, as here
            self.conn.send_method(self.number, spec.TxCommitOk())
        return wait(settled)

    def on_tx_rollback(self, m: spec.TxRollback) -> None:
        if self.tx is None:
            raise errors.precondition("channel is not transactional")
        self.tx = []
        self.tx_publishes = 0
        if self.tx_taken:
            restored = dict(self.unacked)
            restored.update(self.tx_taken)
            self.unacked = dict(sorted(restored.items()))
            self.tx_taken = []
        self.conn.send_method(self.number, spec.TxRollbackOk())


    # --- direct reply-to ---------------------------------------------------------------
    def _consume_direct_reply(self, m: spec.BasicConsume) -> None:
        if not m.no_ack:
            raise errors.precondition("reply consumer cannot acknowledge")
        if self.reply_consumer is not None:
            raise errors.precondition("reply consumer already set")
        tag = m.consumer_tag or new_name("amq.ctag-")
        self.reply_consumer = Consumer(tag, None, self, True, False, 0)  # type: ignore[arg-type]
        # the key names this node, so a reply published on another node of a sharded
        # vhost comes here over the queue link
        self.reply_key = reply_token(self.broker.settings.node_name) + "." + new_name("")
        self.broker.runtime.reply_channels[self.reply_key] = self
        if not m.nowait:
            self.conn.send_method(self.number, spec.BasicConsumeOk(consumer_tag=tag))

    def _end_direct_reply(self) -> None:
        self.broker.runtime.reply_channels.pop(self.reply_key, None)
        self.reply_consumer = None

    def _stamp_reply_to(self, msg: Message) -> Message:
        """A request that asks for a direct reply: name this channel in its reply-to."""
        if msg.properties.reply_to != REPLY_TO:
            return msg
        if self.reply_consumer is None:
            raise errors.precondition("fast reply consumer does not exist")
        props = copy.copy(msg.properties)
        props.reply_to = REPLY_TO_PREFIX + self.reply_key
        return msg.with_properties(props)

    def deliver_reply(self, msg: Message) -> bool:
        """A direct reply for this channel's reply consumer (from this node or over a queue
        link); dropped if its client does not read."""
        consumer = self.reply_consumer
        transport = self.conn.transport
        if consumer is None or transport is None or \
                transport.get_write_buffer_size() > REPLY_TO_MAX_BUFFERED:
            return False
        self.deliver(consumer, None, QueueEntry(0, msg))  # type: ignore[arg-type]
        self.conn.flush()
        return True

    def _publish_reply(self, msg: Message, mandatory: bool) -> None:
        key = msg.routing_key[len(REPLY_TO_PREFIX):]
        node = reply_node(key)
        if node not in (None, self.broker.settings.node_name) and \
                self.broker.runtime.sharded(self.vhost.name):
            # the requester is on another node of a sharded vhost: its reply goes there
            self.broker.mirror.links.to(node).reply(self.vhost.name, key, msg)
            self.counters.count_publish(True)
            if self.confirm:
                self.publish_tag += 1
                self._confirm_after(self.publish_tag, None)
            return
        target = self.broker.runtime.reply_channels.get(key)
        # dropped if its client does not read, as for a vanished requester
        delivered = target is not None and target.deliver_reply(msg)
        if not delivered and mandatory:
            self.send_content(spec.BasicReturn(
                reply_code=errors.NO_ROUTE, reply_text="NO_ROUTE", exchange="",
                routing_key=msg.routing_key), msg)
        self.counters.count_publish(delivered)
        if self.confirm:
            self.publish_tag += 1
            self._confirm_after(self.publish_tag, None)

    # --- read model (management API, metrics) ---
    def stats(self) -> ChannelStats:
        """The channel's figures now (node/read_models.py); computed here, never per message."""
        conn = self.conn
        in_tx = self.tx is not None
        return ChannelStats(
            number=self.number, connection_name=conn.name, user=conn.user,
            vhost=conn.vhost.name if conn.vhost else None,
            state="running" if self.state == OPEN else str(self.state),
            consumers=tuple(self.consumers.values()), prefetch_count=self.prefetch_count,
            global_prefetch_count=self.global_prefetch, confirm=self.confirm,
            transactional=in_tx, messages_unacknowledged=len(self.unacked),
            messages_unconfirmed=len(self._confirms),
            messages_uncommitted=self.tx_publishes if in_tx else 0,
            acks_uncommitted=len(self.tx_taken) if in_tx else 0,
            pending_raft_commands=len(self._backlog) + int(self.busy))

    def unacked_bytes(self) -> dict[Queue, int]:
        """Body bytes this channel holds delivered and not yet acknowledged, per queue."""
        out: dict[Queue, int] = {}
        for q, entry, _c in list(self.unacked.values()):
            out[q] = out.get(q, 0) + len(entry.message.body)
        return out


def _check_expiration(msg: Message) -> None:
    raw = msg.properties.expiration
    why = expiration_error(raw if raw is not None else "")
    if why is not None:
        raise ChannelError(errors.PRECONDITION_FAILED,
                           f"invalid expiration '{raw}': {why}", 60, 40)


async def _remote(op: Any) -> Any:
    """An operation on a queue another node owns: the owner's refusal is this channel's."""
    try:
        return await op
    except LinkError as e:
        raise ChannelError(e.code, e.text) from None


def _default_exchange() -> ChannelError:
    return ChannelError(errors.ACCESS_REFUSED, "operation not permitted on the default exchange")


def _size(event: Event) -> int:
    """What a waiting event holds in memory, roughly."""
    if type(event) is Publish:
        return len(event.header) + len(event.body) + 64
    return 64


_HANDLERS: dict[type, Callable[[Channel, Any], Any]] = {}


def _register() -> None:
    for cls in spec.METHODS.values():
        attr = "on_" + cls.NAME.replace(".", "_").replace("-", "_")
        fn = getattr(Channel, attr, None)
        if fn is not None:
            _HANDLERS[cls] = fn


_register()
