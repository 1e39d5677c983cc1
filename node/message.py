"""A published message as the broker keeps it: the content header as the raw bytes that
arrived (so a delivery re-sends them untouched), the body, and the few properties routing,
expiry and persistence need, decoded once on demand."""

from __future__ import annotations

import msgpack

from node.amqp import spec
from node.amqp.fields import SyntaxError_


class Message:
    __slots__ = ("exchange", "routing_key", "header", "body", "persistent", "_props",
                 "_record", "__weakref__")

    def __init__(self, exchange: str, routing_key: str, header: bytes, body: bytes,
                 persistent: bool) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        # content header frame payload: class id, weight, body size, property flags + props
        self.header = header
        self.body = body
        self.persistent = persistent
        self._props: spec.BasicProperties | None = None
        self._record: bytes | None = None  # encoded once, shared by every queue it reaches

    @classmethod
    def from_publish(cls, exchange: str, routing_key: str, header: bytes,
                     body: bytes) -> "Message":
        # delivery-mode 2 = persistent; read without decoding the whole property block
        return cls(exchange, routing_key, header, body,
                   spec.delivery_mode_of(header, 12) == 2)

    @property
    def properties(self) -> spec.BasicProperties:
        if self._props is None:
            try:
                self._props = spec.BasicProperties.decode(self.header, 12)
            except SyntaxError_:
                self._props = spec.BasicProperties()
        return self._props

    @property
    def headers(self) -> dict:
        return self.properties.headers or {}

    @property
    def size(self) -> int:
        return len(self.body)

    def encode(self) -> bytes:
        """The record kept in the vhost's LMDB store: one flag byte (so recovery can drop
        transient records without decoding them), then msgpack."""
        if self._record is None:
            self._record = (b"P" if self.persistent else b"T") + msgpack.packb(
                (self.exchange, self.routing_key, self.header, self.body), use_bin_type=True)
        return self._record

    @staticmethod
    def record_is_persistent(record: bytes) -> bool:
        return record[:1] == b"P"

    @classmethod
    def decode(cls, record: bytes) -> "Message":
        exchange, routing_key, header, body = msgpack.unpackb(memoryview(record)[1:], raw=False)
        return cls(exchange, routing_key, header, body, record[:1] == b"P")

    def with_properties(self, props: spec.BasicProperties) -> "Message":
        """A copy with rewritten properties (BCC stripping, direct reply-to, dead-lettering)."""
        from node.amqp.frames import content_header_payload
        header = content_header_payload(60, len(self.body), props.encode())
        m = Message(self.exchange, self.routing_key, header, self.body, self.persistent)
        m._props = props
        return m
