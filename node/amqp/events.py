"""What the protocol core (`protocol.py`) tells the broker: one event per thing a client did
that the broker must act on.  Frames the core answers by itself (channel.open-ok,
connection.close-ok, heartbeats, the pieces of a message being assembled) produce none.

Plain classes with slots, and `Publish`, made for every message, a named tuple."""

from __future__ import annotations

from typing import Any, NamedTuple

from node.amqp.errors import AMQPError


class EventBase:
    __slots__ = ()

    def __repr__(self) -> str:
        names: tuple[str, ...] = self.__slots__
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in names)
        return f"{type(self).__name__}({fields})"


class LoginRequested(EventBase):
    """connection.start-ok: the client's credentials.  The core waits (reads no further
    frame) until the broker calls `accept_login` or closes the connection."""

    __slots__ = ("mechanism", "response", "client_properties")

    def __init__(self, mechanism: str, response: bytes, client_properties: dict) -> None:
        self.mechanism = mechanism
        self.response = response
        self.client_properties = client_properties


class Tuned(EventBase):
    """connection.tune-ok, checked against our limits: what was negotiated."""

    __slots__ = ("channel_max", "frame_max", "heartbeat")

    def __init__(self, channel_max: int, frame_max: int, heartbeat: int) -> None:
        self.channel_max = channel_max
        self.frame_max = frame_max
        self.heartbeat = heartbeat


class OpenRequested(EventBase):
    """connection.open: the core waits until the broker calls `accept_open`, hands the
    connection over to another node (`release_to_owner`) or closes it."""

    __slots__ = ("virtual_host",)

    def __init__(self, virtual_host: str) -> None:
        self.virtual_host = virtual_host


class SecretUpdated(EventBase):
    """connection.update-secret (already answered with update-secret-ok)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class ConnectionCloseReceived(EventBase):
    """The client closed the connection; close-ok is already on its way."""

    __slots__ = ("reply_code", "reply_text")

    def __init__(self, reply_code: int, reply_text: str) -> None:
        self.reply_code = reply_code
        self.reply_text = reply_text


class ConnectionClosed(EventBase):
    """connection.close-ok for our connection.close: the socket can go."""

    __slots__ = ()


class ProtocolRejected(EventBase):
    """Not AMQP 0-9-1: the protocol header we speak is on its way; hang up after it."""

    __slots__ = ()


class ProtocolError(EventBase):
    """The client broke the protocol (a bad frame, a method out of place, a wrong channel).
    The error closes the connection; the core reads no further frame."""

    __slots__ = ("error", "channel")

    def __init__(self, error: AMQPError, channel: int) -> None:
        self.error = error
        self.channel = channel


class ChannelOpened(EventBase):
    """channel.open on a free number (channel.open-ok is already on its way)."""

    __slots__ = ("channel",)

    def __init__(self, channel: int) -> None:
        self.channel = channel


class ChannelCloseReceived(EventBase):
    """The client closed a channel.  The core sends close-ok when the broker calls
    `channel_close_ok`, after whatever the channel still had to answer."""

    __slots__ = ("channel",)

    def __init__(self, channel: int) -> None:
        self.channel = channel


class ChannelClosed(EventBase):
    """The client acknowledged our channel.close: the channel number is free again."""

    __slots__ = ("channel",)

    def __init__(self, channel: int) -> None:
        self.channel = channel


class MethodReceived(EventBase):
    """A method for an open channel, decoded (any but basic.publish, which arrives as a
    whole message, and the channel.open/close handshake, which the core keeps)."""

    __slots__ = ("channel", "method")

    def __init__(self, channel: int, method: Any) -> None:
        self.channel = channel
        self.method = method


class Publish(NamedTuple):
    """basic.publish with its content header and whole body, assembled from its frames.

    A tuple, unlike the other events: one is made for every message, and the core makes it
    with `tuple.__new__` (`publish_event`), which runs no Python code at all."""

    channel: int
    exchange: str
    routing_key: str
    mandatory: bool
    immediate: bool
    header: bytes
    body: bytes


def publish_event(channel: int, exchange: str, routing_key: str, mandatory: bool,
                  immediate: bool, header: bytes, body: bytes) -> Publish:
    """A Publish, the slow way (the core's per-message path inlines this)."""
    return _new_tuple(Publish, (channel, exchange, routing_key, mandatory, immediate, header,
                                body))


_new_tuple = tuple.__new__


class ContentRejected(EventBase):
    """A message the channel must refuse (larger than the configured maximum).  Comes in
    order with the channel's other events: the broker closes the channel with `error`
    after answering what came before it.  The core skips the message's body frames."""

    __slots__ = ("channel", "error")

    def __init__(self, channel: int, error: AMQPError) -> None:
        self.channel = channel
        self.error = error


# what the core's events() yields
Event = EventBase | Publish
