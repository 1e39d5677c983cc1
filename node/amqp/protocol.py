"""The AMQP 0-9-1 connection as a state machine that does no I/O (the shape of h11): bytes
in with `receive_data`, events out with `events()` (or `next_event`), frames out with
`data_to_send`.

It owns everything the protocol decides by itself: the protocol header, the connection
handshake (start, tune, open), closing in both directions, which channels are open, and
assembling basic.publish, its content header and body frames into one `Publish`.  What
needs the broker (a login, a vhost, what a method does) comes out as an event, and the
broker answers by calling a method here (`accept_login`, `accept_open`, `close`, ...).
At a decision (a login, a connection.open) the core pauses: it reads no further frame
until the broker has decided, so that frames pipelined behind connection.open can still
be handed to another node unparsed.

The transitions are the two tables below, CONNECTION and CHANNEL: (state, what happened)
-> next state.  Whatever a table does not list is a protocol error.  The asyncio adapter
(`connection.py`) owns the socket, the timers and back-pressure; `channel.py` does what
channel methods mean.  Nothing here imports asyncio or socket (a test says so)."""

from __future__ import annotations

import struct
from typing import Any, Callable, Iterator

from node.amqp import errors, spec
from node.amqp.errors import AMQPConnectionError, AMQPError, ChannelError
from node.amqp.events import (
    ChannelClosed,
    ChannelCloseReceived,
    ChannelOpened,
    ConnectionClosed,
    ConnectionCloseReceived,
    ContentRejected,
    Event,
    LoginRequested,
    MethodReceived,
    OpenRequested,
    ProtocolError,
    ProtocolRejected,
    Publish,
    SecretUpdated,
    Tuned,
    publish_event,
)
from node.amqp.fields import AMQPFrameError, AMQPSyntaxError, UnknownMethod
from node.amqp.frames import HEARTBEAT_FRAME, PROTOCOL_HEADER, FrameReader, encode_frame
from node.amqp.states import (  # noqa: F401 - the states are re-exported for the adapter
    _LIVE,
    _READS,
    AUTHENTICATING,
    AWAIT_HEADER,
    AWAIT_OPEN,
    AWAIT_START_OK,
    AWAIT_TUNE_OK,
    CH_AWAIT_BODY,
    CH_AWAIT_HEADER,
    CH_CLOSE_RECEIVED,
    CH_CLOSING,
    CH_DISCARD_BODY,
    CH_OPEN,
    CHANNEL,
    CLOSED,
    CLOSING,
    CONNECTION,
    FORGOTTEN,
    IGNORING,
    OPEN,
    OPENING,
    STATE_NAMES,
    ChannelState,
    State,
    transition,
)

_FRAME_HEAD = struct.Struct(">BHI")
_FRAME_END = b"\xce"
_CONTENT_HEADER = struct.Struct(">HHQ")  # class id, weight, body size
_PUBLISH_ID = b"\x00\x3c\x00\x28"  # basic.publish: class 60, method 40
_unpack_publish = spec.BasicPublish.unpack
_new_tuple = tuple.__new__  # a Publish without running Python code (see events.Publish)
_OLD_HEADER = b"AMQP\x01\x01\x00\x09"  # 0-9-1 as some old clients announce it


class NEED_DATA:  # noqa: N801 - a sentinel, named as h11 names it
    """`next_event`: the frames so far are all taken; more bytes are needed."""


class PAUSED:  # noqa: N801
    """`next_event`: frames may be buffered, but none is read until the broker decides."""


class ChannelCore:
    """One channel as the core sees it: its state and the message being assembled."""

    __slots__ = ("number", "state", "exchange", "routing_key", "mandatory", "immediate",
                 "header", "body", "remaining", "last_publish", "last_args")

    def __init__(self, number: int) -> None:
        self.number = number
        self.state = CH_OPEN
        self.exchange = ""
        self.routing_key = ""
        self.mandatory = False
        self.immediate = False
        self.header = b""
        self.body: list[bytes] = []
        self.remaining = 0
        # a publisher sends the same basic.publish bytes message after message (one
        # exchange, one routing key): the last ones decoded, to compare instead of decode
        self.last_publish = b""
        self.last_args: tuple[str, str, bool, bool] = ("", "", False, False)

    def move(self, happened: str) -> None:
        nxt = transition(CHANNEL, self.state, happened)
        assert nxt is not None, f"{happened} forgets a channel: the core's _forget does"
        self.state = nxt


class ConnectionCore:
    """One client connection's protocol state, driven by bytes and the broker's decisions.

    `settings` needs channel_max, frame_max, heartbeat and max_message_size (our limits,
    offered in connection.tune)."""

    def __init__(self, settings: Any, server_properties: dict,
                 mechanisms: str = "PLAIN AMQPLAIN") -> None:
        self.state = AWAIT_HEADER
        self.server_properties = server_properties
        self.mechanisms = mechanisms
        self.limits = settings
        self.max_message_size: int = settings.max_message_size
        self.channel_max: int = settings.channel_max
        self.frame_max = spec.FRAME_MIN_SIZE
        self.heartbeat = 0
        self.channels: dict[int, ChannelCore] = {}
        self._reader = FrameReader(frame_max=spec.FRAME_MIN_SIZE)
        self._header_buf = b""
        self._frames: list[tuple[int, int, bytes]] = []
        self._next = 0
        self._failed = False  # a protocol error was reported: read nothing more
        self._reading = False  # frames are read in this state (see _READS)
        self._out: list[bytes] = []
        # called when output goes from none to some (the adapter schedules a write)
        self.wake: Callable[[], None] = _nothing

    # ------------------------------------------------------------------------------
    # bytes in, events out
    # ------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> Event | None:
        """Take bytes from the client.  Returns an event only when the bytes end the
        connection before any frame (a protocol header that is not ours)."""
        if self.state >= CLOSED or self._failed:
            return None
        if self.state == AWAIT_HEADER:
            buf = self._header_buf + data
            if len(buf) < 8 and PROTOCOL_HEADER.startswith(buf):
                self._header_buf = buf
                return None
            self._header_buf = b""
            head, data = buf[:8], buf[8:]
            if head != PROTOCOL_HEADER and head != _OLD_HEADER:
                # tell the client which protocol we speak, then hang up (spec 4.2.2)
                self._move("other-protocol")
                self._out.append(PROTOCOL_HEADER)
                return ProtocolRejected()
            self._move("protocol-header")
            self.send_method(0, spec.ConnectionStart(
                version_major=0, version_minor=9, server_properties=self.server_properties,
                mechanisms=self.mechanisms.encode(), locales=b"en_US"))
            if not data:
                return None
        try:
            frames = self._reader.feed(data)
        except AMQPFrameError as e:
            self._fail()
            return ProtocolError(AMQPConnectionError(errors.FRAME_ERROR, str(e)), 0)
        if frames:
            if self._next < len(self._frames):
                self._frames = self._frames[self._next:] + frames
            else:
                self._frames = frames
            self._next = 0
        return None

    def next_event(self) -> Event | type[NEED_DATA] | type[PAUSED]:
        """The next event from the frames received so far; NEED_DATA when more bytes are
        needed, PAUSED while the core waits for the broker's decision (or reads nothing
        more: closed, or after a protocol error)."""
        event = next(self.events(), None)
        if event is not None:
            return event
        if self._reading or (self.state is AWAIT_HEADER and not self._failed):
            return NEED_DATA
        return PAUSED

    def events(self) -> Iterator[Event]:
        """The events of the frames received so far, one at a time, until more bytes are
        needed or the core waits for a decision.  Lazily: what the broker does with one
        event (close a channel, accept a login) counts for the frames after it.  The same
        as calling next_event until None, without a call per event (this is the path
        every message takes)."""
        # The position lives in a local and is written back (self._next) before every
        # yield and at the end: frames are not added while this runs (receive_data is not
        # called meanwhile), and the broker's calls between events only pause or close.
        frames = self._frames
        n = len(frames)
        i = self._next
        channels = self.channels
        max_size = self.max_message_size
        while i < n and self._reading:
            ftype, ch, payload = frames[i]
            i += 1
            try:
                if ftype == 1:
                    if ch and payload[:4] == _PUBLISH_ID and self.state is OPEN:
                        cs = channels.get(ch)
                        if cs is not None and cs.state is CH_OPEN:
                            # basic.publish, the frame every message starts with (inline:
                            # this is the broker's hottest path)
                            if payload == cs.last_publish:  # same arguments as the last
                                exchange, routing_key, mandatory, immediate = cs.last_args
                            else:
                                try:
                                    _r, exchange, routing_key, mandatory, immediate = \
                                        _unpack_publish(payload, 4)
                                except AMQPSyntaxError:
                                    raise _cannot_decode(payload) from None
                                cs.last_publish = payload
                                cs.last_args = (exchange, routing_key, mandatory, immediate)
                            # most often its header and its one body frame came in the same
                            # read: the whole message at once (states.WHOLE_PUBLISH: the
                            # channel stays CH_OPEN, so nothing is written)
                            if i + 1 < n:
                                htype, hch, header = frames[i]
                                btype, bch, body = frames[i + 1]
                                if (htype == 2 and btype == 3 and hch == ch and bch == ch
                                        and len(header) >= 14):
                                    class_id, _w, size = _CONTENT_HEADER.unpack_from(header)
                                    if class_id == 60 and size == len(body) and size <= max_size:
                                        i += 2
                                        self._next = i
                                        yield _new_tuple(Publish, (
                                            ch, exchange, routing_key, mandatory,
                                            immediate, header, body))
                                        continue
                            cs.move("basic.publish")
                            cs.exchange, cs.routing_key = exchange, routing_key
                            cs.mandatory, cs.immediate = mandatory, immediate
                            continue
                    self._next = i
                    event = self._on_method_frame(ch, payload)
                elif ftype == 2:
                    event = self._on_content_header(ch, payload)
                elif ftype == 3:
                    event = self._on_body(ch, payload)
                else:  # heartbeat: the adapter saw bytes arrive, which is all it means
                    if ch != 0:
                        raise AMQPConnectionError(errors.FRAME_ERROR,
                                                  "heartbeat frame on non-zero channel")
                    event = None
            except AMQPError as e:
                if self.state == CLOSING:
                    continue  # we are closing anyway: only close/close-ok matter now
                self._fail()
                self._next = i
                yield ProtocolError(e, ch)
                continue
            if event is not None:
                self._next = i
                yield event
        if self._frames is frames:  # not handed over meanwhile
            self._next = i

    # --- the content frames of a message ----------------------------------------------
    def _on_content_header(self, ch: int, payload: bytes) -> Event | None:
        cs = self._content_channel(ch)
        if cs is None:
            return None
        if cs.state != CH_AWAIT_HEADER:
            raise AMQPConnectionError(errors.UNEXPECTED_FRAME,
                                      "expected method frame, got non method frame instead")
        if len(payload) < 14:  # class, weight, body size, property flags
            raise AMQPConnectionError(errors.FRAME_ERROR, "malformed content header: "
                                      f"{len(payload)} bytes", 60, 40)
        class_id, _weight, body_size = _CONTENT_HEADER.unpack_from(payload)
        if class_id != 60:
            raise AMQPConnectionError(errors.UNEXPECTED_FRAME,
                                      f"expected content header for class 60, got one for "
                                      f"class {class_id} instead", 60, 40)
        if body_size > self.max_message_size:
            cs.move("oversized-content-header")
            cs.remaining = body_size
            return ContentRejected(ch, ChannelError(
                errors.PRECONDITION_FAILED, f"message size {body_size} is larger than "
                f"configured max size {self.max_message_size}", 60, 40))
        if body_size == 0:
            cs.move("empty-content-header")
            return self._published(cs, bytes(payload), b"")
        cs.move("content-header")
        cs.header = bytes(payload)
        cs.remaining = body_size
        cs.body = []
        return None

    def _on_body(self, ch: int, payload: bytes) -> Event | None:
        cs = self._content_channel(ch)
        if cs is None:
            return None
        if cs.state != CH_AWAIT_BODY and cs.state != CH_DISCARD_BODY:
            raise AMQPConnectionError(errors.UNEXPECTED_FRAME,
                                      "expected method frame, got non method frame instead")
        n = len(payload)
        if n > cs.remaining:
            raise AMQPConnectionError(errors.FRAME_ERROR,
                                      "content body frame exceeds remaining content size",
                                      60, 40)
        cs.remaining -= n
        if cs.remaining:
            cs.move("body")
            if cs.state == CH_AWAIT_BODY:
                cs.body.append(payload)
            return None
        discard = cs.state == CH_DISCARD_BODY
        cs.move("last-body")
        if discard:
            return None
        body = b"".join((*cs.body, payload)) if cs.body else payload
        cs.body = []
        return self._published(cs, cs.header, body)

    def _published(self, cs: ChannelCore, header: bytes, body: bytes) -> Publish:
        return publish_event(cs.number, cs.exchange, cs.routing_key, cs.mandatory, cs.immediate,
                       header, body)

    def _content_channel(self, ch: int) -> ChannelCore | None:
        """The channel a content frame is for; None to drop the frame."""
        if self.state != OPEN:
            if self.state == CLOSING:
                return None
            raise AMQPConnectionError(errors.UNEXPECTED_FRAME,
                                      "content frame before connection.open")
        if ch == 0:
            raise AMQPConnectionError(errors.UNEXPECTED_FRAME, "content frame on channel 0")
        cs = self.channels.get(ch)
        if cs is None:
            raise AMQPConnectionError(errors.CHANNEL_ERROR,
                                      f"content frame on unopened channel {ch}")
        if cs.state in IGNORING:
            return None
        return cs

    # --- methods --------------------------------------------------------------------
    def _on_method_frame(self, ch: int, payload: bytes) -> Event | None:
        try:
            method = spec.decode_method(payload)
        except UnknownMethod as e:
            raise AMQPConnectionError(errors.NOT_IMPLEMENTED,
                                      f"unknown method class={e.class_id} "
                                      f"method={e.method_id}", e.class_id, e.method_id) from None
        except AMQPSyntaxError:
            raise _cannot_decode(payload) from None
        if ch == 0:
            return self._on_connection_method(method)
        if self.state != OPEN:
            if self.state == CLOSING:
                return None  # after connection.close only close/close-ok matter
            raise AMQPConnectionError(errors.COMMAND_INVALID,
                                      "channel frame before connection.open",
                                      method.CLASS_ID, method.METHOD_ID)
        cs = self.channels.get(ch)
        if cs is None:
            if type(method) is spec.ChannelOpen:
                return self._open_channel(ch)
            if type(method) is spec.ChannelCloseOk:
                return None  # late close-ok for a channel we already forgot
            raise AMQPConnectionError(errors.CHANNEL_ERROR,
                                      f"expected 'channel.open' on channel {ch}",
                                      method.CLASS_ID, method.METHOD_ID)
        st = cs.state
        if st in IGNORING:
            if st == CH_CLOSING and type(method) in (spec.ChannelCloseOk, spec.ChannelClose):
                self._forget(cs, "channel.close" if type(method) is spec.ChannelClose
                             else "channel.close-ok")
                if type(method) is spec.ChannelClose:
                    self.send_method(ch, spec.ChannelCloseOk())
                return ChannelClosed(ch)
            return None
        if st != CH_OPEN:
            raise AMQPConnectionError(
                errors.UNEXPECTED_FRAME, "expected content header for class 60, got non "
                "content header frame instead", method.CLASS_ID, method.METHOD_ID)
        kind = type(method)
        if kind is spec.ChannelClose:
            cs.move("channel.close")
            return ChannelCloseReceived(ch)
        if kind is spec.ChannelCloseOk:
            return None
        if kind is spec.ChannelOpen:
            raise AMQPConnectionError(errors.CHANNEL_ERROR, "second 'channel.open' seen", 20, 10)
        return MethodReceived(ch, method)

    def _open_channel(self, number: int) -> Event:
        # as RabbitMQ: the limit is on how many channels are open, not on their numbers
        if self.channel_max and len(self.channels) >= self.channel_max:
            raise AMQPConnectionError(errors.NOT_ALLOWED,
                                      f"number of channels opened ({len(self.channels)}) has "
                                      f"reached the negotiated channel_max ({self.channel_max})")
        self.channels[number] = ChannelCore(number)
        self.send_method(number, spec.ChannelOpenOk())
        return ChannelOpened(number)

    def _on_connection_method(self, m: Any) -> Event | None:
        st = self.state
        kind = type(m)
        if kind is spec.ConnectionClose:
            self._move("connection.close")
            self.channels.clear()
            self.send_method(0, spec.ConnectionCloseOk())
            return ConnectionCloseReceived(m.reply_code, m.reply_text)
        if kind is spec.ConnectionCloseOk:
            if st == CLOSING:
                self._move("connection.close-ok")
                return ConnectionClosed()
            return None
        if st == CLOSING:
            return None
        if kind in (spec.ConnectionBlocked, spec.ConnectionUnblocked):
            return None  # clients may send these; nothing to do
        if st == AWAIT_START_OK and kind is spec.ConnectionStartOk:
            self._move("connection.start-ok")
            response = (m.response.encode() if isinstance(m.response, str)
                        else bytes(m.response))
            return LoginRequested(m.mechanism, response, m.client_properties or {})
        if st == AWAIT_TUNE_OK and kind is spec.ConnectionTuneOk:
            return self._on_tune_ok(m)
        if st == AWAIT_OPEN and kind is spec.ConnectionOpen:
            self._move("connection.open")
            return OpenRequested(m.virtual_host)
        if st == OPEN and kind is spec.ConnectionUpdateSecret:
            # clients refresh expiring credentials (OAuth tokens) this way; internal users'
            # passwords do not expire, and RabbitMQ's internal backend accepts the new
            # secret as it is and keeps the connection (checked against RabbitMQ 3.10)
            self._move("connection.update-secret")
            self.send_method(0, spec.ConnectionUpdateSecretOk())
            return SecretUpdated(m.reason)
        raise AMQPConnectionError(errors.CHANNEL_ERROR, f"unexpected method in connection "
                                  f"state {_UNEXPECTED_IN.get(st, 'running')}",
                                  m.CLASS_ID, m.METHOD_ID)

    def _on_tune_ok(self, m: Any) -> Event:
        limits = self.limits
        if m.frame_max and m.frame_max < spec.FRAME_MIN_SIZE:
            raise AMQPConnectionError(errors.NOT_ALLOWED, f"frame_max={m.frame_max} < "
                                      f"{spec.FRAME_MIN_SIZE} min size", 10, 31)
        if m.frame_max > limits.frame_max:
            raise AMQPConnectionError(errors.NOT_ALLOWED, f"frame_max={m.frame_max} > "
                                      f"{limits.frame_max} max size", 10, 31)
        if m.channel_max > limits.channel_max:
            raise AMQPConnectionError(errors.NOT_ALLOWED, f"channel_max={m.channel_max} > "
                                      f"{limits.channel_max} max size", 10, 31)
        self._move("connection.tune-ok")
        self._tune(m.channel_max or limits.channel_max, m.frame_max or limits.frame_max,
                   m.heartbeat)
        return Tuned(self.channel_max, self.frame_max, self.heartbeat)

    def _tune(self, channel_max: int, frame_max: int, heartbeat: int) -> None:
        self.channel_max = channel_max
        self.frame_max = frame_max
        self.heartbeat = heartbeat
        self._reader.frame_max = frame_max

    # ------------------------------------------------------------------------------
    # the broker's decisions
    # ------------------------------------------------------------------------------
    def accept_login(self) -> None:
        """The credentials of LoginRequested are good: offer our limits."""
        self._move("app:accept-login")
        limits = self.limits
        self.send_method(0, spec.ConnectionTune(channel_max=limits.channel_max,
                                                frame_max=limits.frame_max,
                                                heartbeat=limits.heartbeat))

    def adopt(self, channel_max: int, frame_max: int, heartbeat: int) -> None:
        """A connection whose handshake another node did (it forwards the client to us):
        straight to the connection.open decision."""
        self.state = AWAIT_OPEN
        self._tune(channel_max, frame_max, heartbeat)
        self._move("app:adopt")

    def accept_open(self) -> None:
        self._move("app:accept-open")
        self.send_method(0, spec.ConnectionOpenOk())

    def release_to_owner(self) -> bytes:
        """The client goes to another node: every byte received after connection.open,
        unparsed, to pass on.  The core is done."""
        self._move("app:hand-over")
        rest = [encode_frame(t, c, p) for t, c, p in self._frames[self._next:]]
        self._frames, self._next = [], 0
        rest.append(self._reader.take_buffered())
        return b"".join(rest)

    def channel_close_ok(self, channel: int) -> None:
        """The broker has finished with a channel the client closed: confirm it."""
        cs = self.channels.get(channel)
        if cs is not None and cs.state == CH_CLOSE_RECEIVED:
            self._forget(cs, "app:close-ok")
            self.send_method(channel, spec.ChannelCloseOk())

    def close_channel(self, channel: int, err: AMQPError) -> None:
        """Close one channel because of a (soft) error: channel.close, then only
        close/close-ok count on it."""
        cs = self.channels.get(channel)
        if cs is None or cs.state == CH_CLOSING:
            return
        cs.move("app:close")
        cs.body = []
        self.send_method(channel, spec.ChannelClose(
            reply_code=err.code, reply_text=err.reply_text[:255], class_id=err.class_id,
            method_id=err.method_id))

    def close(self, err: AMQPError) -> bool:
        """Close the connection with `err` (connection.close; we then wait for close-ok).
        False if it was already closing or closed."""
        if self.state not in _LIVE:
            return False
        self._move("app:close")
        self.channels.clear()
        self._failed = False
        self._reading = True  # for close-ok
        self.send_method(0, spec.ConnectionClose(
            reply_code=err.code, reply_text=err.reply_text[:255], class_id=err.class_id,
            method_id=err.method_id))
        return True

    def abort(self) -> None:
        """The socket is gone (or is dropped without a word)."""
        if self.state != CLOSED:
            self._move("app:abort")
        self.channels.clear()

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]

    # ------------------------------------------------------------------------------
    # frames out
    # ------------------------------------------------------------------------------
    def send_method(self, channel: int, method: Any) -> None:
        if self.state >= CLOSING and type(method) not in _LAST_WORDS:
            # connection.close or close-ok was the last frame (spec 2.2.4): a reply that a
            # channel still had in the works (a Raft change) is dropped
            return
        payload = method.encode()
        if not self._out:
            self.wake()
        self._out.append(_FRAME_HEAD.pack(1, channel, len(payload)) + payload + _FRAME_END)

    def send_content(self, channel: int, method_payload: bytes, header: bytes,
                     body: bytes) -> None:
        """A method with content (basic.deliver, get-ok, return): the method frame, the
        header frame as it arrived, and the body split at frame_max."""
        if self.state >= CLOSING:
            return
        if not self._out:
            self.wake()
        head = _FRAME_HEAD.pack
        n = len(body)
        chunk = self.frame_max - 8
        if n <= 4096 and n <= chunk:
            # small messages: one bytes object for all three frames (fewer pieces to join)
            self._out.append(
                head(1, channel, len(method_payload)) + method_payload + _FRAME_END
                + head(2, channel, len(header)) + header + _FRAME_END
                + (head(3, channel, n) + body + _FRAME_END if n else b""))
            return
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

    def send_heartbeat(self) -> None:
        if not self._out:
            self.wake()
        self._out.append(HEARTBEAT_FRAME)

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    def data_to_send(self) -> bytes:
        """Everything queued to send, as one buffer (one write per event-loop turn: a
        slow reader with millions of small pieces queued makes writes quadratic)."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return b"".join(out)

    # ------------------------------------------------------------------------------
    def _move(self, happened: str) -> None:
        state = transition(CONNECTION, self.state, happened)
        assert state is not None
        self.state = state
        self._reading = state in _READS and not self._failed

    def _fail(self) -> None:
        # what follows the bad frame stays buffered: once the broker has sent
        # connection.close, a close or close-ok the client sent after it still counts
        self._failed = True
        self._reading = False

    def _forget(self, cs: ChannelCore, happened: str) -> None:
        if transition(CHANNEL, cs.state, happened) is FORGOTTEN:
            self.channels.pop(cs.number, None)


def _nothing() -> None:
    pass


_LAST_WORDS = (spec.ConnectionClose, spec.ConnectionCloseOk)

_UNEXPECTED_IN = {AWAIT_START_OK: "starting", AWAIT_TUNE_OK: "tuning", AWAIT_OPEN: "opening",
                  OPEN: "running"}


def _cannot_decode(payload: bytes) -> AMQPConnectionError:
    """Method arguments that do not parse: 501 with the bytes as RabbitMQ prints them
    (rabbit_misc:frame_error, "~w" of the binary)."""
    cid, mid = struct.unpack_from(">HH", payload) if len(payload) >= 4 else (0, 0)
    shown = ",".join(str(b) for b in bytes(payload[4:4 + 100]))
    return AMQPConnectionError(errors.FRAME_ERROR, f"cannot decode <<{shown}>>", cid, mid)
