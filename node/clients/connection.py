"""One client connection, the asyncio side: the socket, timers (handshake, heartbeats,
closing), back-pressure (flow control, alarms, bounded memory) and what the broker decides
(logins, vhosts, channels).  The protocol itself is `protocol.ConnectionCore`, which
does no I/O: bytes go in, events come out, and this adapter acts on each event.

This is also the one place where an `AMQPError` becomes channel.close or connection.close
(`handle_error`)."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from typing import Any, Protocol

from node.amqp import errors, spec
from node.amqp.errors import AMQPConnectionError, AMQPError, ChannelError
from node.amqp.events import (
    ChannelClosed,
    ChannelCloseReceived,
    ChannelOpened,
    ConnectionClosed,
    ConnectionCloseReceived,
    ContentRejected,
    LoginRequested,
    MethodReceived,
    OpenRequested,
    ProtocolError,
    ProtocolRejected,
    Publish,
    SecretUpdated,
    Tuned,
)
from node.amqp.fields import AMQPSyntaxError, decode_table
from node.amqp.protocol import (
    AWAIT_HEADER,
    CLOSED,
    CLOSING,
    OPEN,
    OPENING,
    ConnectionCore,
)
from node.auth import check_password, decode_plain, is_loopback
from node.clients import forwarding
from node.clients.channel import Channel
from node.read_models import ConnectionStats, TLSSession
from node.tls import peer_common_name

log = logging.getLogger("warren.connection")


class ConnectionBroker(Protocol):
    """What a client connection uses of its node (node/runtime/broker.py's Broker, which
    sits above the AMQP layer and is not imported here)."""

    settings: Any
    runtime: Any  # node/runtime/state.py: vhosts, users, nodes, connections...
    counters: Any
    access: Any  # node/runtime/access.py
    definitions: Any  # node/runtime/definitions.py
    roles: Any  # node/runtime/vhost_roles.py
    resources: Any  # node/alarms.py

    def server_properties(self, capabilities: dict) -> dict: ...

HANDSHAKE_TIMEOUT = 10.0
CLOSE_OK_TIMEOUT = 3.0
CLOSING_TIMEOUT = 30  # RabbitMQ's ?CLOSING_TIMEOUT: longest wait for the client to hang up
FLOW_MAX_PAUSE = 0.5

SERVER_CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}


class AMQPConnection(asyncio.Protocol):
    def __init__(self, broker: ConnectionBroker) -> None:
        self.broker = broker
        self.settings = broker.settings
        self.loop = asyncio.get_event_loop()
        self.log = log
        self.core = ConnectionCore(self.settings,
                                       broker.server_properties(SERVER_CAPABILITIES))
        self.core.wake = self._wake
        self.send_method = self.core.send_method
        self.send_content = self.core.send_content
        self.transport: asyncio.Transport | None = None
        self.channels: dict[int, Channel] = {}
        self.user = ""
        self.vhost: Any = None
        self.client_properties: dict = {}
        self.capabilities: dict = {}
        self.exclusive_queues: set[str] = set()
        self.paused = False  # hand its channels no deliveries (writing paused, output held)
        self._writing_paused = False
        self.via: str | None = None  # on the owner: the node that forwards this client
        self.publisher = False  # has published: blocked by resource alarms
        self.blocked = False
        self.flow_queues: set[Any] = set()  # queues that asked us to slow down (flow control)
        # Every reason we stopped reading this client; it is read again when none is left
        # (`_apply_reading` alone decides): "alarm" (a resource alarm), "flow" (a queue's
        # consumers are behind), "writing" (it does not read what we send), "store" (its
        # vhost's store is behind the disk), a channel's Raft backlog, "move" (its vhost is
        # being moved), "lease" (this owner lost touch with the Raft majority).
        self.read_holds: set[str] = set()
        self._reading_paused = False
        # reasons we hold what we would write to it (deliveries included): "lease"
        self.output_holds: set[str] = set()
        self._flow_timer: asyncio.TimerHandle | None = None
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task] = set()
        self._last_recv = time.monotonic()
        self._sent_since_tick = False
        self._timer: asyncio.TimerHandle | None = None
        self.peer = ("?", 0)
        self.name = "?"
        self.connected_at = time.time()
        self.recv_bytes = 0
        self.send_bytes = 0
        self.recv_count = 0  # socket reads (management API: recv_cnt)
        self.send_count = 0  # socket writes (send_cnt)
        self.auth_mechanism = ""
        self.tls = False  # AMQPS (management API: "ssl")
        self.tls_peer_name: str | None = None  # CN of a verified client certificate

    @property
    def closing(self) -> bool:
        """Going away (either side closed): deliver nothing more to its channels.  The
        protocol core's state, read, never copied."""
        return self.core.state >= CLOSING

    # what was negotiated, as the protocol core holds it
    @property
    def state(self) -> int:
        return self.core.state

    @property
    def state_name(self) -> str:
        return self.core.state_name

    @property
    def channel_max(self) -> int:
        return self.core.channel_max

    @property
    def frame_max(self) -> int:
        return self.core.frame_max

    @property
    def heartbeat(self) -> int:
        return self.core.heartbeat

    # ------------------------------------------------------------------------------
    # asyncio.Protocol
    # ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername") or ("?", 0)
        local = transport.get_extra_info("sockname") or ("?", 0)
        self.peer = (peer[0], peer[1])
        self.name = f"{peer[0]}:{peer[1]} -> {local[0]}:{local[1]}"
        if transport.get_extra_info("sslcontext") is not None:
            self.tls = True
            self.tls_peer_name = peer_common_name(transport)
            if self.tls_peer_name is not None:
                self.core.mechanisms += " EXTERNAL"
        self._timer = self.loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout)
        self.broker.runtime.connections.add(self)
        self.broker.counters.connections_opened += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.core.abort()
        self.broker.counters.connections_closed += 1
        for q in self.flow_queues:
            q.flow_blocked.discard(self)
        self.flow_queues.clear()
        if self._flow_timer is not None:
            self._flow_timer.cancel()
        if self._timer is not None:
            self._timer.cancel()
        for ch in list(self.channels.values()):
            ch.teardown()
        self.channels.clear()
        for t in self._tasks:
            t.cancel()
        self.broker.runtime.connection_closed(self)
        self.transport = None

    def pause_writing(self) -> None:
        # the client reads slower than we write: stop handing it messages until it drains,
        # and stop reading it too: what it sends meanwhile (publishes that come back as
        # basic.return with their bodies, confirms, gets) would only pile up in our buffer
        self._writing_paused = True
        self.paused = True
        self.hold_reading("writing")

    def resume_writing(self) -> None:
        self._writing_paused = False
        self.paused = bool(self.output_holds)
        self.release_reading("writing")
        if not self.paused:
            for ch in list(self.channels.values()):
                ch._dispatch_all()
            self.flush()

    def data_received(self, data: bytes) -> None:
        self._last_recv = time.monotonic()
        self.recv_bytes += len(data)
        self.recv_count += 1
        core = self.core
        event = core.receive_data(data)
        if event is not None:
            self._on_event(event)
        self._drain_events()

    def _drain_events(self) -> None:
        """Act on every event the frames received so far make (until the core pauses)."""
        core = self.core
        channels = self.channels
        event: Any
        for event in core.events():
            kind = type(event)
            try:
                # the events every message makes go straight to their channel
                if kind is Publish:
                    channel = channels[event.channel]
                    if channel.busy:
                        channel.feed(event)
                    else:
                        channel.on_publish(event)
                elif kind is MethodReceived:
                    channels[event.channel].feed(event)
                else:
                    self._on_event(event)
            except AMQPError as e:
                self.handle_error(e, getattr(event, "channel", 0))
            except AMQPSyntaxError as e:  # e.g. a content header whose properties are cut short
                self.handle_error(AMQPConnectionError(errors.SYNTAX_ERROR,
                                                      f"malformed frame: {e}"),
                                  getattr(event, "channel", 0))
            except Exception as e:
                log.exception("connection %s: error handling %s", self.name, kind.__name__)
                self.close_connection(AMQPConnectionError(errors.INTERNAL_ERROR, str(e)))
        if core.has_output:
            self.flush()

    # ------------------------------------------------------------------------------
    # events: what the client did, as the protocol core saw it
    # ------------------------------------------------------------------------------
    def _on_event(self, event: Any) -> None:  # one of events.py's
        kind = type(event)
        if kind is ChannelOpened:
            number = event.channel
            self.channels[number] = Channel(self, number)
            self.broker.counters.channels_opened += 1
        elif kind is ChannelCloseReceived or kind is ContentRejected:
            # in order with the channel's other methods (it may be waiting for Raft)
            self.channels[event.channel].feed(event)
        elif kind is ChannelClosed:
            self.channel_closed(event.channel)
        elif kind is LoginRequested:
            self._on_login(event)
        elif kind is Tuned:
            pass  # the core holds what was negotiated
        elif kind is OpenRequested:
            self._on_open(event.virtual_host)
        elif kind is ConnectionCloseReceived:
            self._on_client_close()
        elif kind is ConnectionClosed:
            if self.transport is not None:
                self.transport.close()
        elif kind is ProtocolError:
            self.handle_error(event.error, event.channel)
        elif kind is ProtocolRejected:
            self.flush()
            if self.transport is not None:
                self.transport.close()
        elif kind is SecretUpdated:
            log.info("connection %s: user '%s' updated secret, reason: %s", self.name,
                     self.user, event.reason)

    def channel_closed(self, number: int) -> None:
        if self.channels.pop(number, None) is not None:
            self.broker.counters.channels_closed += 1

    def _on_client_close(self) -> None:
        for ch in list(self.channels.values()):
            ch.teardown()
        self.channels.clear()
        self.flush()
        # as RabbitMQ: exclusive queues go now, but the socket stays open for the client
        # to close after reading close-ok (closing it first trips clients such as aiormq),
        # and is dropped if the client lingers past the heartbeat timeout (at most 30 s)
        self.broker.runtime.connection_closed(self)
        if self._timer is not None:
            self._timer.cancel()
        hb = self.heartbeat
        linger = hb if 0 < hb < CLOSING_TIMEOUT else CLOSING_TIMEOUT
        self._timer = self.loop.call_later(linger, self._abort)

    def _on_login(self, m: LoginRequested) -> None:
        self.client_properties = m.client_properties
        caps = self.client_properties.get("capabilities")
        self.capabilities = caps if isinstance(caps, dict) else {}
        mech = m.mechanism
        response = m.response
        external = None
        try:
            if mech == "EXTERNAL" and self.tls_peer_name is not None:
                # rabbitmq_auth_mechanism_ssl with ssl_cert_login_from = common_name: the
                # verified client certificate is the credential; the user must exist
                username, password = self.tls_peer_name, ""
                external = username
            elif mech == "PLAIN":
                username, password = decode_plain(response)
            elif mech == "AMQPLAIN":
                table, _ = decode_table(struct.pack(">I", len(response)) + response, 0)
                username = _text(table.get("LOGIN", ""))
                password = _text(table.get("PASSWORD", ""))
            else:
                raise AMQPConnectionError(errors.ACCESS_REFUSED,
                                          f"unsupported authentication mechanism '{mech}'",
                                          10, 11)
        except (ValueError, AMQPSyntaxError):
            raise AMQPConnectionError(errors.ACCESS_REFUSED,
                                      f"malformed {mech} response", 10, 11) from None
        user = self.broker.runtime.users.get(username)
        refused = None
        if user is None or (external is None and not check_password(
                password, user.get("password_hash", ""), user.get("hashing", ""))):
            refused = (f"Login was refused using authentication mechanism {mech}. For details "
                       f"see the broker logfile.")
            log.warning("login refused for user '%s' from %s: bad credentials", username,
                        self.peer[0])
        elif (username == self.settings.default_user == "guest"
              and not is_loopback(self.peer[0]) and self.broker.access.loopback_only_guest):
            refused = "user 'guest' can only connect via localhost"
            log.warning("login refused for 'guest' from %s: loopback only", self.peer[0])
        if refused:
            if self.capabilities.get("authentication_failure_close"):
                self.close_connection(AMQPConnectionError(errors.ACCESS_REFUSED, refused,
                                                          10, 11))
            else:
                self.core.abort()
                if self.transport is not None:
                    self.transport.close()
            return
        self.user = username
        self.auth_mechanism = mech
        self.core.accept_login()

    def _on_open(self, virtual_host: str) -> None:
        vhost = self.broker.runtime.vhosts.get(virtual_host)
        if vhost is None or not self.broker.access.can_access_vhost(self.user, virtual_host):
            raise AMQPConnectionError(errors.NOT_ALLOWED, f"access to vhost '{virtual_host}' "
                                      f"refused for user '{self.user}'", 10, 40)
        runtime = self.broker.runtime
        # a sharded vhost is served where the client connects (its queues on every shard)
        if not runtime.owns(virtual_host) and not runtime.sharded(virtual_host):
            self._start_forwarding(virtual_host)
            return
        limit = vhost.limits.get("max-connections")
        if limit is not None and len(vhost.connections) >= limit:
            raise AMQPConnectionError(errors.NOT_ALLOWED, f"access to vhost '{virtual_host}' "
                                      f"refused for user '{self.user}': connection limit "
                                      f"({limit}) is reached", 10, 40)
        self.vhost = vhost
        vhost.connections.add(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.heartbeat:
            self._timer = self.loop.call_later(self.heartbeat / 2, self._heartbeat_tick)
        self.core.accept_open()

    # ------------------------------------------------------------------------------
    # any-node access: hand the client over to the vhost's owner (node/clients/forwarding.py).
    # The core waits at connection.open meanwhile: what the client pipelined behind it
    # stays unparsed, for the owner.
    # ------------------------------------------------------------------------------
    def _start_forwarding(self, vhost: str) -> None:
        owner = self.broker.runtime.owner_of(vhost)
        node = self.broker.runtime.nodes.get(owner or "")
        if node is None or not node.get("forward") or not self.settings.cluster_secret:
            # 320, not 530: the vhost exists and the user may use it, so clients must retry
            # (py-amqp/kombu treat 320 as recoverable, 530 and 403 as final)
            raise AMQPConnectionError(errors.CONNECTION_FORCED, f"vhost '{vhost}' is "
                                      f"unavailable: its owner node '{owner}' is not known "
                                      f"here; retry", 10, 40)
        assert self.transport is not None
        self.hold_reading("forwarding")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.spawn(forwarding.forward_to_owner(self, vhost, owner, node["forward"]))

    def forward_failed(self, why: str) -> None:
        """The owner node could not be reached: the client is told to retry (320)."""
        self.close_connection(AMQPConnectionError(errors.CONNECTION_FORCED, f"{why}; retry",
                                                  10, 40))
        self.release_reading("forwarding")

    def detach(self) -> tuple[asyncio.Transport, bytes] | None:
        """The client leaves this object for a byte splice to its vhost's owner: its socket,
        and every byte received after connection.open, unparsed.  None if it is gone."""
        client = self.transport
        if client is None or client.is_closing():
            return None
        if self.core.state != OPENING:
            # closed meanwhile (user deleted, node stopping): the close stands; read again
            # so that the client's close-ok arrives
            self.release_reading("forwarding")
            return None
        pipelined = self.core.release_to_owner()
        self.flush()
        self.broker.runtime.connections.discard(self)
        self.transport = None  # from now on this object is out of the path
        return client, pipelined

    def adopt(self, facts: dict) -> None:
        """On the owner: a connection another node authenticated and forwards to us."""
        try:
            self.user = str(facts["user"])
            vhost = str(facts["vhost"])
            self.client_properties = decode_table(facts.get("client_properties") or
                                                  b"\x00\x00\x00\x00", 0)[0]
            channel_max = int(facts["channel_max"])
            frame_max = int(facts["frame_max"])
            heartbeat = int(facts["heartbeat"])
            peer = facts.get("peer") or ["?", 0]
            self.peer = (str(peer[0]), int(peer[1]))
            self.via = str(facts.get("node"))
            # what the client's own connection to the accepting node was (not our link)
            self.tls = bool(facts.get("tls", False))
            self.tls_peer_name = None
            self.auth_mechanism = str(facts.get("auth_mechanism") or "PLAIN")
        except (KeyError, TypeError, ValueError, AMQPSyntaxError) as e:
            log.warning("forwarded connection with bad facts: %s", e)
            if self.transport is not None:
                self.transport.abort()
            return
        caps = self.client_properties.get("capabilities")
        self.capabilities = caps if isinstance(caps, dict) else {}
        self.core.adopt(channel_max, frame_max, heartbeat)
        self.name = f"{self.peer[0]}:{self.peer[1]} -> {self.settings.node_name} (via {self.via})"
        try:
            if not self.broker.runtime.owns(vhost):
                # the vhost moved or failed over meanwhile: the client reconnects (320)
                raise AMQPConnectionError(errors.CONNECTION_FORCED, f"vhost '{vhost}' is not "
                                          f"served by node '{self.settings.node_name}'; retry",
                                          10, 40)
            self._on_open(vhost)
        except AMQPError as e:
            self.close_connection(e)
        self.flush()

    # ------------------------------------------------------------------------------
    # heartbeats and timeouts
    # ------------------------------------------------------------------------------
    def _handshake_timeout(self) -> None:
        if self.state < OPEN and self.transport is not None:
            log.warning("closing %s: handshake timeout", self.name)
            self.transport.abort()

    def _heartbeat_tick(self) -> None:
        if self.transport is None or self.state >= CLOSED:
            return
        now = time.monotonic()
        if self.read_holds or self.output_holds:
            self._last_recv = now  # we stopped reading on purpose: not the client's fault
        if now - self._last_recv > self.heartbeat * 2:
            log.warning("closing %s: missed heartbeats from client, timeout %ds", self.name,
                        self.heartbeat)
            self.transport.abort()
            return
        if not self._sent_since_tick:
            self.core.send_heartbeat()
            self.flush()
        self._sent_since_tick = False
        self._timer = self.loop.call_later(self.heartbeat / 2, self._heartbeat_tick)

    # ------------------------------------------------------------------------------
    # errors: the one place they become channel.close / connection.close
    # ------------------------------------------------------------------------------
    def handle_error(self, err: AMQPError, ch: int) -> None:
        if self.state >= CLOSING:
            return
        channel = self.channels.get(ch)
        if err.closes_connection or ch == 0 or channel is None:
            self.close_connection(err)
        else:
            log.info("closing channel %d of %s: %s", ch, self.name, err.reply_text)
            channel.server_close(err)
        self.flush()

    def close_connection(self, err: AMQPError) -> None:
        if not self.core.close(err):
            if self.core.state == AWAIT_HEADER and self.transport is not None:
                self.transport.abort()  # not even a protocol header yet: nothing to say
            return
        log.info("closing connection %s: %s", self.name, err.reply_text)
        for ch in list(self.channels.values()):
            ch.teardown()
        self.channels.clear()
        self.flush()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(CLOSE_OK_TIMEOUT, self._abort)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------------------
    # frames out, batched per event-loop turn
    # ------------------------------------------------------------------------------
    # Frames out go straight to the core, whose `wake` schedules one flush per event-loop
    # turn when its output goes from empty to not (set in __init__): send_method(channel,
    # method) and send_content(channel, method payload, header, body) are the core's own.

    def _wake(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self.output_holds:
            return  # kept in the core's output until released
        data = self.core.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self._sent_since_tick = True
            self.send_bytes += len(data)  # management API: send_oct
            self.send_count += 1
            self.transport.write(data)

    def spawn(self, coro: Any) -> None:
        t = self.loop.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------------------
    # resource alarms: block publishers (connection.blocked) until every alarm clears
    # ------------------------------------------------------------------------------
    def block(self, alarms: set[str]) -> None:
        if self.blocked or self.transport is None or self.state != OPEN:
            return
        self.blocked = True
        if self.capabilities.get("connection.blocked"):
            reason = "low on memory" if "memory" in alarms else "low on disk"
            self.send_method(0, spec.ConnectionBlocked(reason=reason))
            self.flush()
        self.hold_reading("alarm")

    def alarm_raised(self, alarms: set[str]) -> None:
        if self.publisher:
            self.block(alarms)

    def alarm_cleared(self) -> None:
        if not self.blocked:
            return
        self.blocked = False
        if self.transport is None:
            return
        if self.capabilities.get("connection.blocked"):
            self.send_method(0, spec.ConnectionUnblocked())
            self.flush()
        self.release_reading("alarm")

    # ------------------------------------------------------------------------------
    # flow control: a publisher that outruns a queue's consumers is read more slowly
    # (RabbitMQ's credit flow has the same effect), so the backlog stays small and the
    # consumers get the CPU they need instead of the queue paging to disk
    # ------------------------------------------------------------------------------
    def flow_pause(self, queue: Any) -> None:
        if self.transport is None or queue in self.flow_queues:
            return
        if not self.flow_queues:
            # the bound holds whatever else paused us (an alarm clearing must not find a
            # publisher still held by a queue that will never drain)
            self._flow_timer = self.loop.call_later(FLOW_MAX_PAUSE, self._flow_timeout)
        self.flow_queues.add(queue)
        self.hold_reading("flow")
        queue.flow_blocked.add(self)

    def flow_resume(self, queue: Any) -> None:
        self.flow_queues.discard(queue)
        if self.flow_queues:
            return
        if self._flow_timer is not None:
            self._flow_timer.cancel()
            self._flow_timer = None
        self.release_reading("flow")

    def _flow_timeout(self) -> None:
        # never hold a publisher longer than this: a queue that cannot drain must not
        # starve it (RabbitMQ does not block publishers on a queue's length either)
        self._flow_timer = None
        for q in list(self.flow_queues):
            q.flow_blocked.discard(self)
        self.flow_queues.clear()
        self.release_reading("flow")

    # ------------------------------------------------------------------------------
    # bounded memory: stop reading a client while it makes us hold more than we should
    # (reading resumes when every reason, alarms and flow control included, has cleared)
    # ------------------------------------------------------------------------------
    def hold_reading(self, reason: str) -> None:
        self.read_holds.add(reason)
        self._apply_reading()

    def release_reading(self, reason: str) -> None:
        self.read_holds.discard(reason)
        self._apply_reading()

    def _apply_reading(self) -> None:
        """The one place that decides whether this client is read: while any reason holds."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        want_paused = bool(self.read_holds)
        if want_paused != self._reading_paused:
            self._reading_paused = want_paused
            if want_paused:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def hold_output(self, reason: str) -> None:
        """Write nothing more to this client (deliveries, confirms, heartbeats) until
        released: kept in the protocol core's output meanwhile, and its channels are handed
        no deliveries."""
        self.output_holds.add(reason)
        self.paused = True

    def release_output(self, reason: str) -> None:
        if reason in self.output_holds:
            self.output_holds.discard(reason)
            if not self.output_holds:
                self.paused = self._writing_paused
                self.flush()
                if not self.paused:
                    for ch in list(self.channels.values()):
                        ch._dispatch_all()

    def force_close(self, code: int, text: str) -> None:
        """Broker-initiated close (shutdown, vhost deleted, management API)."""
        if self.output_holds:
            # what was held (deliveries of an owner whose lease lapsed) is never sent: the
            # vhost is someone else's now; only the close goes out
            self.core.data_to_send()
            self.output_holds.clear()
            self.paused = self._writing_paused
        self.close_connection(AMQPConnectionError(code, text))
        # the core now takes nothing but close-ok: read it
        self.release_reading("lease")

    # --- read model (management API, metrics) ---
    def stats(self) -> ConnectionStats:
        """The connection's and its socket's figures now (node/read_models.py)."""
        t = self.transport
        sock = t.get_extra_info("sockname") if t is not None else None
        ssl_object = t.get_extra_info("ssl_object") if t is not None else None
        session = None
        if ssl_object is not None:
            cipher = ssl_object.cipher()
            session = TLSSession(protocol=ssl_object.version(),
                                 cipher=cipher[0] if cipher else None,
                                 peer_cert_subject=self.tls_peer_name)
        return ConnectionStats(
            name=self.name, user=self.user, vhost=self.vhost.name if self.vhost else None,
            state=self.state_name,  # RabbitMQ's names
            channels=tuple(self.channels.values()), channel_max=self.channel_max,
            frame_max=self.frame_max, heartbeat=self.heartbeat,
            client_properties=self.client_properties or {},
            auth_mechanism=self.auth_mechanism, connected_at=self.connected_at,
            peer_host=self.peer[0], peer_port=self.peer[1],
            host=sock[0] if sock else None, port=sock[1] if sock else None,
            ssl=bool(self.tls), tls_session=session,
            recv_bytes=self.recv_bytes, send_bytes=self.send_bytes,
            recv_count=self.recv_count, send_count=self.send_count,
            send_pending=t.get_write_buffer_size() if t is not None else 0)


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else str(v)


__all__ = ["AMQPConnection", "ChannelError"]
