"""A published message as the broker keeps it: the content header as the raw bytes that
arrived (so a delivery re-sends them untouched), the body, and the few properties routing,
expiry and persistence need, decoded once on demand."""

from __future__ import annotations

import time
from time import time as _time

import msgpack

from node.amqp import spec
from node.amqp.fields import AMQPSyntaxError

# property flag bits in the content header (first flag word, offset 12)
FLAG_HEADERS = 0x2000
FLAG_PRIORITY = 0x0800
FLAG_REPLY_TO = 0x0200
FLAG_EXPIRATION = 0x0100


_ROUTE_BYTES: dict[tuple[str, str], bytes] = {}


def now_ms() -> int:
    return int(time.time() * 1000)


def expiration_error(raw: object) -> str | None:
    """Why an `expiration` property is invalid, in RabbitMQ's words (it parses it with
    Erlang's string:to_integer: an optional sign, digits, nothing after; at least 0), or
    None when it is valid.  RabbitMQ closes the channel with 406 on an invalid one."""
    text = raw.decode("latin-1") if isinstance(raw, (bytes, bytearray)) else str(raw)
    i = 1 if text[:1] in ("+", "-") else 0
    j = i
    while j < len(text) and "0" <= text[j] <= "9":
        j += 1
    if j == i:
        return "no_integer"
    if j < len(text):
        return "{leftover_string,%s}" % _erlang_string(text[j:])
    value = int(text[:j])
    if value < 0:
        return "{value_negative,%d}" % value
    return None


def _erlang_string(s: str) -> str:
    # how Erlang's ~p prints a list of bytes: quoted when printable, else as integers
    if all(32 <= ord(c) < 127 for c in s):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "[" + ",".join(str(ord(c)) for c in s) + "]"


class Message:
    __slots__ = ("exchange", "routing_key", "header", "body", "persistent", "published_at",
                 "flags", "pid", "_props", "_record", "_route_bytes", "__weakref__")

    def __init__(self, exchange: str, routing_key: str, header: bytes, body: bytes,
                 persistent: bool, published_at: int = 0) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        # content header frame payload: class id, weight, body size, property flags + props
        self.header = header
        self.body = body
        self.persistent = persistent
        # wall-clock ms when it entered the broker: TTLs count from here, across restarts
        self.published_at = published_at or int(_time() * 1000)
        # property flags (first flag word): which properties are present, read once
        self.flags = (header[12] << 8) | header[13] if len(header) >= 14 else 0
        self._props: spec.BasicProperties | None = None
        self._route_bytes: bytes | None = None
        self._record: bytes | None = None  # encoded once, shared by every queue it reaches
        # the publish's id when it crossed a queue link (node/shards/publish_ids.py): kept
        # in the record, so the owner's replicas know it too and a resend is not doubled
        self.pid: bytes | None = None

    @classmethod
    def from_publish(cls, exchange: str, routing_key: str, header: bytes,
                     body: bytes) -> "Message":
        # delivery-mode 2 = persistent; read without decoding the whole property block, and
        # not at all when the flags say there is no delivery-mode
        persistent = (len(header) >= 14 and header[12] & 0x10
                      and spec.delivery_mode_of(header, 12) == 2)
        return cls(exchange, routing_key, header, body, bool(persistent))

    @property
    def route_bytes(self) -> bytes:
        """exchange and routing key as the two shortstrs ending basic.deliver/get-ok,
        encoded once however many consumers receive the message."""
        rb = self._route_bytes
        if rb is None:
            key = (self.exchange, self.routing_key)
            rb = _ROUTE_BYTES.get(key)
            if rb is None:
                ex = self.exchange.encode()
                rk = self.routing_key.encode()
                rb = bytes((len(ex),)) + ex + bytes((len(rk),)) + rk
                if len(_ROUTE_BYTES) >= 4096:  # publishers reuse a few keys; stay bounded
                    _ROUTE_BYTES.clear()
                _ROUTE_BYTES[key] = rb
            self._route_bytes = rb
        return rb

    @property
    def properties(self) -> spec.BasicProperties:
        if self._props is None:
            try:
                self._props = spec.BasicProperties.decode(self.header, 12)
            except AMQPSyntaxError:
                self._props = spec.BasicProperties()
        return self._props

    @property
    def headers(self) -> dict:
        if not self.flags & FLAG_HEADERS:
            return {}
        return self.properties.headers or {}

    @property
    def priority(self) -> int:
        if not self.flags & FLAG_PRIORITY:
            return 0
        return self.properties.priority or 0

    @property
    def expiration_ms(self) -> int | None:
        """The per-message TTL (the `expiration` property), or None."""
        if not self.flags & FLAG_EXPIRATION:
            return None
        raw = self.properties.expiration
        try:
            v = int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        return v if v >= 0 else None

    def encode(self) -> bytes:
        """The record kept in the vhost's LMDB store: one flag byte (so recovery can drop
        transient records without decoding them), then msgpack."""
        if self._record is None:
            fields: tuple = (self.exchange, self.routing_key, self.header, self.body,
                             self.published_at)
            if self.pid is not None:
                fields = (*fields, self.pid)
            self._record = (b"P" if self.persistent else b"T") + msgpack.packb(
                fields, use_bin_type=True)
        return self._record

    def record_with_pid(self, pid: bytes) -> bytes:
        """The record as `encode` gives it, carrying publish id ``pid`` (a publish sent
        over a queue link; this message's own record, shared with local queues, is left
        as it is)."""
        return (b"P" if self.persistent else b"T") + msgpack.packb(
            (self.exchange, self.routing_key, self.header, self.body, self.published_at, pid),
            use_bin_type=True)

    @staticmethod
    def record_pid(record: bytes) -> bytes | None:
        """The publish id a stored record carries, if any."""
        fields = msgpack.unpackb(memoryview(record)[1:], raw=False)
        return fields[5] if len(fields) > 5 else None

    @staticmethod
    def record_is_persistent(record: bytes) -> bool:
        return record[:1] == b"P"

    @classmethod
    def decode(cls, record: bytes) -> "Message":
        fields = msgpack.unpackb(memoryview(record)[1:], raw=False)
        exchange, routing_key, header, body = fields[:4]
        published_at = fields[4] if len(fields) > 4 else 0
        m = cls(exchange, routing_key, header, body, record[:1] == b"P", published_at)
        if len(fields) > 5:
            m.pid = fields[5]
        return m

    def with_properties(self, props: spec.BasicProperties, exchange: str | None = None,
                        routing_key: str | None = None) -> "Message":
        """A copy with rewritten properties (BCC stripping, direct reply-to, dead-lettering);
        it counts as newly published."""
        from node.amqp.frames import content_header_payload
        header = content_header_payload(60, len(self.body), props.encode())
        m = Message(self.exchange if exchange is None else exchange,
                    self.routing_key if routing_key is None else routing_key,
                    header, self.body, props.delivery_mode == 2)
        m._props = props
        return m
