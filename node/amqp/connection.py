"""One client connection: the protocol header, the connection-class handshake (start, tune,
open), heartbeats, closing in both directions, channel multiplexing, and writing frames to
the socket in one batch per event-loop turn.

This file owns the connection state machine and is the one place where an `AMQPError`
becomes channel.close or connection.close."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

from node import errors
from node.amqp import spec
from node.amqp.channel import OPEN as OPEN_CH
from node.amqp.channel import Channel
from node.amqp.fields import AMQPFrameError, AMQPSyntaxError, UnknownMethod, decode_table
from node.amqp.frames import PROTOCOL_HEADER, FrameReader, encode_frame
from node.auth import check_password, decode_plain, is_loopback
from node.errors import AMQPConnectionError, AMQPError, ChannelError
from node.message import Message
from node.read_models import ConnectionStats, TLSSession

if TYPE_CHECKING:
    from node.broker import Broker

log = logging.getLogger("warren.connection")

_FRAME_HEAD = struct.Struct(">BHI")
_FRAME_END = b"\xce"
HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"
_PUBLISH_ID = b"\x00\x3c\x00\x28"  # basic.publish: class 60, method 40
_CONTENT_HEADER = struct.Struct(">HHQ")  # class id, weight, body size
HANDSHAKE_TIMEOUT = 10.0
CLOSE_OK_TIMEOUT = 3.0
CLOSING_TIMEOUT = 30  # RabbitMQ's ?CLOSING_TIMEOUT: longest wait for the client to hang up
FLOW_MAX_PAUSE = 0.5

# connection states
AWAIT_HEADER, AWAIT_START_OK, AWAIT_TUNE_OK, AWAIT_OPEN, OPEN, CLOSING, CLOSED = range(7)

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
    def __init__(self, broker: "Broker") -> None:
        self.broker = broker
        self.settings = broker.settings
        self.loop = asyncio.get_event_loop()
        self.log = log
        self.transport: asyncio.Transport | None = None
        self.state = AWAIT_HEADER
        self._header_buf = b""
        self.reader = FrameReader(frame_max=spec.FRAME_MIN_SIZE)
        self.channels: dict[int, Channel] = {}
        self.channel_max = self.settings.channel_max
        self.frame_max = spec.FRAME_MIN_SIZE
        self.heartbeat = 0
        self.user = ""
        self.vhost: Any = None
        self.client_properties: dict = {}
        self.capabilities: dict = {}
        self.exclusive_queues: set[str] = set()
        self.paused = False
        self.forwarding = False  # handing this client over to the vhost's owner node
        self.closing = False  # going away: deliver nothing more to its channels
        self._forward_backlog: list[bytes] = []
        self.via: str | None = None  # on the owner: the node that forwards this client
        self.publisher = False  # has published: blocked by resource alarms
        self.blocked = False
        self.flow_queues: set[Any] = set()  # queues that asked us to slow down (flow control)
        # other reasons we stopped reading this client (see hold_reading): memory it could
        # otherwise make us hold, e.g. "writing" while it does not read what we send
        self.read_holds: set[str] = set()
        self._flow_timer: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []
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
            from node.tls import peer_common_name
            self.tls = True
            self.tls_peer_name = peer_common_name(transport)
        self._timer = self.loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout)
        self.broker.connections.add(self)
        self.broker.connections_opened += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.closing = True
        self.broker.connections_closed += 1
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
        self.broker.connection_closed(self)
        self.transport = None

    def pause_writing(self) -> None:
        # the client reads slower than we write: stop handing it messages until it drains,
        # and stop reading it too: what it sends meanwhile (publishes that come back as
        # basic.return with their bodies, confirms, gets) would only pile up in our buffer
        self.paused = True
        self.hold_reading("writing")

    def resume_writing(self) -> None:
        self.paused = False
        self.release_reading("writing")
        for ch in list(self.channels.values()):
            ch._dispatch_all()
        self.flush()

    def data_received(self, data: bytes) -> None:
        self._last_recv = time.monotonic()
        self.recv_bytes += len(data)
        self.recv_count += 1
        if self.state == AWAIT_HEADER:
            data = self._on_protocol_header(data)
            if not data:
                return
        if self.state == CLOSED:
            return
        try:
            frames = self.reader.feed(data)
        except AMQPFrameError as e:
            self.close_connection(AMQPConnectionError(errors.FRAME_ERROR, str(e)))
            return
        channels = self.channels
        last_ch = -1
        channel = None
        nframes = len(frames)
        k = 0
        while k < nframes:
            ftype, ch, payload = frames[k]
            k += 1
            if self.forwarding:  # frames pipelined after connection.open go to the owner
                self._forward_backlog.append(encode_frame(ftype, ch, payload))
                continue
            if self.state >= CLOSED or self.transport is None:
                return
            try:
                # hot path: the basic.publish method, header and body frames of an open,
                # idle channel go straight to it (the general path checks much more)
                if ch != last_ch:  # a publish is 3 frames on one channel: look it up once
                    channel = channels.get(ch) if ch else None
                    last_ch = ch
                if channel is not None and not channel._busy and channel.state is OPEN_CH:
                    if ftype == 3:
                        channel._on_body(payload)
                        continue
                    if ftype == 2:
                        channel._on_header(payload)
                        continue
                    if (ftype == 1 and payload[:4] == _PUBLISH_ID
                            and channel._publishing is None and self.state == OPEN):
                        # basic.publish: reserved short, exchange, routing key, bits
                        try:
                            n = payload[6]
                            i = 8 + n
                            exchange = payload[7:i - 1].decode()
                            m = payload[i - 1]
                            routing_key = payload[i:i + m].decode()
                            bits = payload[i + m]
                        except (IndexError, UnicodeDecodeError):
                            raise _cannot_decode(payload) from None
                        # most often its header and its one body frame came in the same read:
                        # publish the whole message at once
                        if k + 1 < nframes:
                            htype, hch, header = frames[k]
                            btype, bch, body = frames[k + 1]
                            if (htype == 2 and btype == 3 and hch == ch and bch == ch
                                    and len(header) >= 14):
                                class_id, _w, size = _CONTENT_HEADER.unpack_from(header)
                                if (class_id == 60 and size == len(body)
                                        and size <= self.settings.max_message_size):
                                    k += 2
                                    channel.publish_whole(exchange, routing_key, bool(bits & 1),
                                                          bool(bits & 2), header, body)
                                    continue
                        channel.start_publish(exchange, routing_key, bool(bits & 1),
                                              bool(bits & 2))
                        continue
                last_ch = -1  # the general path may open or close channels: look up again
                self._on_frame(ftype, ch, payload)
            except AMQPError as e:
                self.handle_error(e, ch)
            except AMQPSyntaxError as e:  # e.g. a content header whose properties are cut short
                self.handle_error(AMQPConnectionError(errors.SYNTAX_ERROR, f"malformed frame: {e}"),
                                  ch)
            except Exception as e:
                log.exception("connection %s: error handling a frame", self.name)
                self.close_connection(AMQPConnectionError(errors.INTERNAL_ERROR, str(e)))
        if self.forwarding:
            self._forward_backlog.append(self.reader.take_buffered())
        if self._out:
            self.flush()

    # ------------------------------------------------------------------------------
    # frames in
    # ------------------------------------------------------------------------------
    def _on_protocol_header(self, data: bytes) -> bytes:
        buf = self._header_buf + data
        if len(buf) < 8:
            if PROTOCOL_HEADER.startswith(buf):
                self._header_buf = buf
                return b""
        head = buf[:8]
        if head != PROTOCOL_HEADER and head != b"AMQP\x01\x01\x00\x09":
            # tell the client which protocol we speak, then hang up (spec 4.2.2)
            assert self.transport is not None
            self.transport.write(PROTOCOL_HEADER)
            self.transport.close()
            self.state = CLOSED
            return b""
        self.state = AWAIT_START_OK
        mechanisms = "PLAIN AMQPLAIN"
        if self.tls_peer_name is not None:
            mechanisms += " EXTERNAL"
        self.send_method(0, spec.ConnectionStart(
            version_major=0, version_minor=9, server_properties=self.broker.server_properties(
                SERVER_CAPABILITIES), mechanisms=mechanisms.encode(), locales=b"en_US"))
        self.flush()
        return buf[8:]

    def _on_frame(self, ftype: int, ch: int, payload: Any) -> None:
        if ftype == spec.FRAME_METHOD:
            try:
                method = spec.decode_method(payload)
            except UnknownMethod as e:
                raise AMQPConnectionError(errors.NOT_IMPLEMENTED,
                                       f"unknown method class={e.class_id} method={e.method_id}",
                                       e.class_id, e.method_id) from None
            except AMQPSyntaxError:
                raise _cannot_decode(payload) from None
            if ch == 0:
                self._on_connection_method(method)
                return
            if self.state != OPEN:
                if self.state == CLOSING:
                    return  # after connection.close only close/close-ok matter
                raise AMQPConnectionError(errors.COMMAND_INVALID,
                                       "channel frame before connection.open",
                                       method.CLASS_ID, method.METHOD_ID)
            channel = self.channels.get(ch)
            if channel is None:
                if isinstance(method, spec.ChannelOpen):
                    self._open_channel(ch)
                    return
                if isinstance(method, spec.ChannelCloseOk):
                    return  # late close-ok for a channel we already forgot
                raise AMQPConnectionError(errors.CHANNEL_ERROR, f"expected 'channel.open' on "
                                       f"channel {ch}", method.CLASS_ID, method.METHOD_ID)
            try:
                channel.feed(ftype, method)
            except AMQPError as e:
                if not e.class_id:
                    e.class_id, e.method_id = method.CLASS_ID, method.METHOD_ID
                raise
        elif ftype == spec.FRAME_HEARTBEAT:
            if ch != 0:
                raise AMQPConnectionError(errors.FRAME_ERROR, "heartbeat frame on non-zero channel")
        else:
            if self.state != OPEN:
                if self.state == CLOSING:
                    return
                raise AMQPConnectionError(errors.UNEXPECTED_FRAME,
                                       "content frame before connection.open")
            if ch == 0:
                raise AMQPConnectionError(errors.UNEXPECTED_FRAME, "content frame on channel 0")
            channel = self.channels.get(ch)
            if channel is None:
                raise AMQPConnectionError(errors.CHANNEL_ERROR,
                                       f"content frame on unopened channel {ch}")
            channel.feed(ftype, payload)

    def _open_channel(self, number: int) -> None:
        # as RabbitMQ: the limit is on how many channels are open, not on their numbers
        if self.channel_max and len(self.channels) >= self.channel_max:
            raise AMQPConnectionError(errors.NOT_ALLOWED,
                                   f"number of channels opened ({len(self.channels)}) has reached"
                                   f" the negotiated channel_max ({self.channel_max})")
        self.channels[number] = Channel(self, number)
        self.broker.channels_opened += 1
        self.send_method(number, spec.ChannelOpenOk())

    def channel_closed(self, number: int) -> None:
        if self.channels.pop(number, None) is not None:
            self.broker.channels_closed += 1

    # --- connection class ---------------------------------------------------------
    def _on_connection_method(self, m: Any) -> None:
        st = self.state
        if isinstance(m, spec.ConnectionClose):
            self.closing = True
            for ch in list(self.channels.values()):
                ch.teardown()
            self.channels.clear()
            self.send_method(0, spec.ConnectionCloseOk())
            self.flush()
            self.state = CLOSED
            # as RabbitMQ: exclusive queues go now, but the socket stays open for the client
            # to close after reading close-ok (closing it first trips clients such as aiormq),
            # and is dropped if the client lingers past the heartbeat timeout (at most 30 s)
            self.broker.connection_closed(self)
            if self._timer is not None:
                self._timer.cancel()
            linger = self.heartbeat if 0 < self.heartbeat < CLOSING_TIMEOUT else CLOSING_TIMEOUT
            self._timer = self.loop.call_later(linger, self._abort)
            return
        if isinstance(m, spec.ConnectionCloseOk):
            if st == CLOSING and self.transport is not None:
                self.transport.close()
            return
        if st == CLOSING:
            return
        if st == AWAIT_START_OK and isinstance(m, spec.ConnectionStartOk):
            self._on_start_ok(m)
        elif st == AWAIT_TUNE_OK and isinstance(m, spec.ConnectionTuneOk):
            self._on_tune_ok(m)
        elif st == AWAIT_OPEN and isinstance(m, spec.ConnectionOpen):
            self._on_open(m)
        elif isinstance(m, (spec.ConnectionBlocked, spec.ConnectionUnblocked)):
            return  # clients may send these; nothing to do
        elif st == OPEN and isinstance(m, spec.ConnectionUpdateSecret):
            # clients refresh expiring credentials (OAuth tokens) this way; internal users'
            # passwords do not expire, and RabbitMQ's internal backend accepts the new secret
            # as it is and keeps the connection (checked against RabbitMQ 3.10)
            log.info("connection %s: user '%s' updated secret, reason: %s", self.name,
                     self.user, m.reason)
            self.send_method(0, spec.ConnectionUpdateSecretOk())
        else:
            raise AMQPConnectionError(errors.CHANNEL_ERROR, f"unexpected method in connection "
                                   f"state {_STATE_NAMES.get(st, 'running')}",
                                   m.CLASS_ID, m.METHOD_ID)

    def _on_start_ok(self, m: Any) -> None:
        self.client_properties = m.client_properties or {}
        caps = self.client_properties.get("capabilities")
        self.capabilities = caps if isinstance(caps, dict) else {}
        mech = m.mechanism
        response = bytes(m.response) if not isinstance(m.response, str) else m.response.encode()
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
                                       f"unsupported authentication mechanism '{mech}'", 10, 11)
        except (ValueError, AMQPSyntaxError):
            raise AMQPConnectionError(errors.ACCESS_REFUSED,
                                   f"malformed {mech} response", 10, 11) from None
        user = self.broker.users.get(username)
        refused = None
        if user is None or (external is None and not check_password(
                password, user.get("password_hash", ""), user.get("hashing", ""))):
            refused = (f"Login was refused using authentication mechanism {mech}. For details "
                       f"see the broker logfile.")
            log.warning("login refused for user '%s' from %s: bad credentials", username,
                        self.peer[0])
        elif (username == self.settings.default_user == "guest"
              and not is_loopback(self.peer[0]) and self.broker.loopback_only_guest):
            refused = "user 'guest' can only connect via localhost"
            log.warning("login refused for 'guest' from %s: loopback only", self.peer[0])
        if refused:
            if self.capabilities.get("authentication_failure_close"):
                self.close_connection(AMQPConnectionError(errors.ACCESS_REFUSED, refused, 10, 11))
            else:
                self.state = CLOSED
                if self.transport is not None:
                    self.transport.close()
            return
        self.user = username
        self.auth_mechanism = mech
        self.state = AWAIT_TUNE_OK
        s = self.settings
        self.send_method(0, spec.ConnectionTune(channel_max=s.channel_max, frame_max=s.frame_max,
                                                heartbeat=s.heartbeat))

    def _on_tune_ok(self, m: Any) -> None:
        s = self.settings
        if m.frame_max and m.frame_max < spec.FRAME_MIN_SIZE:
            raise AMQPConnectionError(errors.NOT_ALLOWED, f"frame_max={m.frame_max} < "
                                   f"{spec.FRAME_MIN_SIZE} min size", 10, 31)
        if m.frame_max > s.frame_max:
            raise AMQPConnectionError(errors.NOT_ALLOWED,
                                   f"frame_max={m.frame_max} > {s.frame_max} max size", 10, 31)
        if m.channel_max > s.channel_max:
            raise AMQPConnectionError(errors.NOT_ALLOWED, f"channel_max={m.channel_max} > "
                                   f"{s.channel_max} max size", 10, 31)
        self.frame_max = m.frame_max or s.frame_max
        self.channel_max = m.channel_max or s.channel_max
        self.heartbeat = m.heartbeat
        self.reader.frame_max = self.frame_max
        self.state = AWAIT_OPEN

    def _on_open(self, m: Any) -> None:
        vhost = self.broker.vhosts.get(m.virtual_host)
        if vhost is None or not self.broker.can_access_vhost(self.user, m.virtual_host):
            raise AMQPConnectionError(errors.NOT_ALLOWED, f"access to vhost '{m.virtual_host}' "
                                   f"refused for user '{self.user}'", 10, 40)
        if not self.broker.owns(m.virtual_host):
            self._start_forwarding(m.virtual_host)
            return
        limit = vhost.limits.get("max-connections")
        if limit is not None and len(vhost.connections) >= limit:
            raise AMQPConnectionError(errors.NOT_ALLOWED, f"access to vhost '{m.virtual_host}' "
                                   f"refused for user '{self.user}': connection limit ({limit}) "
                                   f"is reached", 10, 40)
        self.vhost = vhost
        vhost.connections.add(self)
        self.state = OPEN
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.heartbeat:
            self._timer = self.loop.call_later(self.heartbeat / 2, self._heartbeat_tick)
        self.send_method(0, spec.ConnectionOpenOk())

    # ------------------------------------------------------------------------------
    # any-node access: hand the client over to the vhost's owner (node/forwarding.py)
    # ------------------------------------------------------------------------------
    def _start_forwarding(self, vhost: str) -> None:
        owner = self.broker.owner_of(vhost)
        node = self.broker.nodes.get(owner or "")
        if node is None or not node.get("forward") or not self.settings.cluster_secret:
            # 320, not 530: the vhost exists and the user may use it, so clients must retry
            # (py-amqp/kombu treat 320 as recoverable, 530 and 403 as final)
            raise AMQPConnectionError(errors.CONNECTION_FORCED, f"vhost '{vhost}' is unavailable: "
                                   f"its owner node '{owner}' is not known here; retry", 10, 40)
        self.forwarding = True
        assert self.transport is not None
        self.transport.pause_reading()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.spawn(self._forward(vhost, owner, node["forward"]))

    async def _forward(self, vhost: str, owner: str | None, address: str) -> None:
        from node.amqp.fields import encode_table
        from node.forwarding import Spliced, open_forward, splice
        facts = {"user": self.user, "vhost": vhost, "node": self.settings.node_name,
                 "client_properties": encode_table(self.client_properties),
                 "channel_max": self.channel_max, "frame_max": self.frame_max,
                 "heartbeat": self.heartbeat, "peer": [self.peer[0], self.peer[1]],
                 "tls": self.tls, "auth_mechanism": self.auth_mechanism}
        try:
            from node.tls import cluster_client_ssl
            upstream, early = await open_forward(address, self.settings.cluster_secret, facts,
                                                 ssl=cluster_client_ssl(self.settings))
        except Exception as e:  # any failure: tell the client, never leave it hanging
            log.warning("cannot forward %s to node '%s' at %s: %s", self.name, owner, address, e)
            self.forwarding = False
            self._forward_backlog.clear()
            # the failover controller's reason when it has one (e.g. no in-sync replica
            # left to promote: it comes back with its owner)
            why = self.broker.replication.available(vhost) or (
                f"vhost '{vhost}' is unavailable: its owner node '{owner}' cannot be reached")
            self.close_connection(AMQPConnectionError(errors.CONNECTION_FORCED, f"{why}; retry",
                                                   10, 40))
            if self.transport is not None:
                self.transport.resume_reading()
            return
        client = self.transport
        if client is None or client.is_closing():
            upstream.close()
            return
        log.info("forwarding %s (vhost '%s') to node '%s'", self.name, vhost, owner)
        self.flush()
        self.broker.connections.discard(self)
        self.transport = None  # from now on this object is out of the path
        self.state = CLOSED
        to_owner, to_client = splice(client, upstream, early, b"".join(self._forward_backlog))
        self._forward_backlog = []
        # kept so that an owner change can close it from here (the old owner may be hung)
        spliced = Spliced(vhost, owner, to_owner, to_client)
        forwarded = self.broker.forwarded.setdefault(vhost, set())
        forwarded.add(spliced)
        to_owner.on_close = lambda: forwarded.discard(spliced)

    def adopt(self, facts: dict) -> None:
        """On the owner: a connection another node authenticated and forwards to us."""
        from node.amqp.fields import decode_table
        try:
            self.user = str(facts["user"])
            vhost = str(facts["vhost"])
            self.client_properties = decode_table(facts.get("client_properties") or
                                                  b"\x00\x00\x00\x00", 0)[0]
            self.channel_max = int(facts["channel_max"])
            self.frame_max = int(facts["frame_max"])
            self.heartbeat = int(facts["heartbeat"])
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
        self.reader.frame_max = self.frame_max
        self.name = f"{self.peer[0]}:{self.peer[1]} -> {self.settings.node_name} (via {self.via})"
        self.state = AWAIT_OPEN
        try:
            if not self.broker.owns(vhost):
                # the vhost moved or failed over meanwhile: the client reconnects (320)
                raise AMQPConnectionError(errors.CONNECTION_FORCED, f"vhost '{vhost}' is not "
                                       f"served by node '{self.settings.node_name}'; retry",
                                       10, 40)
            self._on_open(spec.ConnectionOpen(virtual_host=vhost))
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
        if self.blocked or self.read_holds:
            self._last_recv = now  # we stopped reading on purpose: not the client's fault
        if now - self._last_recv > self.heartbeat * 2:
            log.warning("closing %s: missed heartbeats from client, timeout %ds", self.name,
                        self.heartbeat)
            self.transport.abort()
            return
        if not self._sent_since_tick:
            self.transport.write(HEARTBEAT)
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
        if self.state >= CLOSING:
            return
        log.info("closing connection %s: %s", self.name, err.reply_text)
        self.closing = True
        for ch in list(self.channels.values()):
            ch.teardown()
        self.channels.clear()
        self.send_method(0, spec.ConnectionClose(
            reply_code=err.code, reply_text=err.reply_text[:255], class_id=err.class_id,
            method_id=err.method_id))
        self.flush()
        self.state = CLOSING
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(CLOSE_OK_TIMEOUT, self._abort)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------------------
    # frames out, batched per event-loop turn
    # ------------------------------------------------------------------------------
    def send_method(self, channel: int, method: Any) -> None:
        payload = method.encode()
        self._out.append(_FRAME_HEAD.pack(1, channel, len(payload)) + payload + _FRAME_END)
        self._schedule()

    def send_content_frames(self, channel: int, method_payload: bytes, msg: Message) -> None:
        """A method with content (basic.deliver, get-ok, return): the method frame, the
        header frame as it arrived, and the body split at frame_max."""
        head = _FRAME_HEAD.pack
        header = msg.header
        body = msg.body
        n = len(body)
        chunk = self.frame_max - 8
        if n <= 4096 and n <= chunk:
            # small messages: one bytes object for all three frames (fewer pieces to join)
            self._out.append(
                head(1, channel, len(method_payload)) + method_payload + _FRAME_END
                + head(2, channel, len(header)) + header + _FRAME_END
                + (head(3, channel, n) + body + _FRAME_END if n else b""))
        else:
            out = self._out
            out.append(head(1, channel, len(method_payload)) + method_payload + _FRAME_END
                       + head(2, channel, len(header)) + header + _FRAME_END)
            if n <= chunk:
                out.append(head(3, channel, n))
                out.append(body)  # large bodies are not copied into a new bytes object
                out.append(_FRAME_END)
            else:
                mv = memoryview(body)
                for i in range(0, n, chunk):
                    part = mv[i:i + chunk]
                    out.append(head(3, channel, len(part)))
                    out.append(part)  # type: ignore[arg-type]
                    out.append(_FRAME_END)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def _schedule(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        self._out = []
        if self.transport is not None and not self.transport.is_closing():
            self._sent_since_tick = True
            # one buffer per turn: uvloop's writelines keeps every piece as its own iovec,
            # and a slow reader with millions of small pieces queued makes writes quadratic
            data = b"".join(out)
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
        self.transport.pause_reading()

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
        if not self.flow_queues and not self.read_holds:
            self.transport.resume_reading()

    # ------------------------------------------------------------------------------
    # flow control: a publisher that outruns a queue's consumers is read more slowly
    # (RabbitMQ's credit flow has the same effect), so the backlog stays small and the
    # consumers get the CPU they need instead of the queue paging to disk
    # ------------------------------------------------------------------------------
    def flow_pause(self, queue: Any) -> None:
        if self.transport is None or queue in self.flow_queues:
            return
        if not self.flow_queues:
            if not self.blocked and not self.read_holds:
                self.transport.pause_reading()
            # the bound holds whatever else paused us (an alarm clearing must not find a
            # publisher still held by a queue that will never drain)
            self._flow_timer = self.loop.call_later(FLOW_MAX_PAUSE, self._flow_timeout)
        self.flow_queues.add(queue)
        queue.flow_blocked.add(self)

    def flow_resume(self, queue: Any) -> None:
        self.flow_queues.discard(queue)
        if self.flow_queues:
            return
        if self._flow_timer is not None:
            self._flow_timer.cancel()
            self._flow_timer = None
        if self.transport is not None and not self.blocked and not self.read_holds:
            self.transport.resume_reading()

    def _flow_timeout(self) -> None:
        # never hold a publisher longer than this: a queue that cannot drain must not
        # starve it (RabbitMQ does not block publishers on a queue's length either)
        self._flow_timer = None
        for q in list(self.flow_queues):
            q.flow_blocked.discard(self)
        self.flow_queues.clear()
        if self.transport is not None and not self.blocked and not self.read_holds:
            self.transport.resume_reading()

    # ------------------------------------------------------------------------------
    # bounded memory: stop reading a client while it makes us hold more than we should
    # (reading resumes when every reason, alarms and flow control included, has cleared)
    # ------------------------------------------------------------------------------
    def hold_reading(self, reason: str) -> None:
        if self.transport is None or reason in self.read_holds:
            return
        if not self.read_holds and not self.blocked and not self.flow_queues:
            self.transport.pause_reading()
        self.read_holds.add(reason)

    def release_reading(self, reason: str) -> None:
        if reason not in self.read_holds:
            return
        self.read_holds.discard(reason)
        if (self.transport is not None and not self.read_holds and not self.blocked
                and not self.flow_queues):
            self.transport.resume_reading()

    def force_close(self, code: int, text: str) -> None:
        """Broker-initiated close (shutdown, vhost deleted, management API)."""
        self.close_connection(AMQPConnectionError(code, text))

    # --- read model (management API, metrics) ---
    _RABBIT_STATES = {AWAIT_HEADER: "starting", AWAIT_START_OK: "starting",
                      AWAIT_TUNE_OK: "tuning", AWAIT_OPEN: "opening", OPEN: "running",
                      CLOSING: "closing", CLOSED: "closed"}

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
            state=self._RABBIT_STATES.get(self.state, "running"),
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


_STATE_NAMES = {AWAIT_START_OK: "starting", AWAIT_TUNE_OK: "tuning", AWAIT_OPEN: "opening",
                OPEN: "running"}


def _cannot_decode(payload: bytes) -> AMQPConnectionError:
    """Method arguments that do not parse: 501 with the bytes as RabbitMQ prints them
    (rabbit_misc:frame_error, "~w" of the binary)."""
    cid, mid = struct.unpack_from(">HH", payload) if len(payload) >= 4 else (0, 0)
    shown = ",".join(str(b) for b in bytes(payload[4:4 + 100]))
    return AMQPConnectionError(errors.FRAME_ERROR, f"cannot decode <<{shown}>>", cid, mid)


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else str(v)


__all__ = ["AMQPConnection", "ChannelError"]
