"""Headers exchange: bindings match on message headers instead of the routing key.

`x-match` is "all" (the default) or "any"; the "-with-x" variants (all-with-x, any-with-x)
also compare binding arguments whose names start with "x-", which plain all/any skip.  A
binding argument with a void value matches when the header is present with any value.
Values match as RabbitMQ 4.0 compares them (rabbit_exchange_type_headers, `=:=` on the
values without their field types): every integer width is one class, float and double
another, decimal, timestamp and bool each their own, and a long string and a byte array
with the same bytes are the same value (both are binaries); so decimal 1 is not integer
1 and 1.0 is not 1."""

from __future__ import annotations

from decimal import Decimal

from node.amqp.fields import Timestamp
from node.exchanges.base import Binding, Destination, Exchange


def headers_match(args: dict, headers: dict | None) -> bool:
    headers = headers or {}
    mode = args.get("x-match", "all")
    if isinstance(mode, bytes):
        mode = mode.decode("utf-8", "replace")
    with_x = mode.endswith("-with-x")
    any_mode = mode.startswith("any")
    for k, v in args.items():
        if k == "x-match" or (k.startswith("x-") and not with_x):
            continue
        if k in headers and (v is None or _equal(headers[k], v)):
            if any_mode:
                return True
        elif not any_mode:
            return False
    # "all" with every argument present (or none to check) matches; "any" found none
    return not any_mode


def _type_class(v: object) -> str:
    # order matters: bool and Timestamp are ints
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, Timestamp):
        return "timestamp"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, Decimal):
        return "decimal"
    if isinstance(v, (str, bytes, bytearray)):  # ByteArray too
        return "longstr"
    return type(v).__name__


def _wire(v: object) -> bytes:
    if isinstance(v, str):
        return v.encode("utf-8", "surrogateescape")
    assert isinstance(v, (bytes, bytearray))
    return bytes(v)


def _equal(a: object, b: object) -> bool:
    ca = _type_class(a)
    if ca != _type_class(b):
        return False
    if ca == "longstr":  # compared as the bytes on the wire
        return _wire(a) == _wire(b)
    elif ca == "decimal":
        # AMQP decimals are (scale, value): 1.0 and 1 are different values
        return a.as_tuple() == b.as_tuple()  # type: ignore[attr-defined]
    return a == b


class HeadersExchange(Exchange):
    type_name = "headers"

    def route(self, routing_key: str, headers: dict | None) -> set[Destination] | list[Destination]:
        out: set[Destination] = set()
        for b in self.bindings.values():
            if b.destination not in out and headers_match(b.arguments, headers):
                out.add(b.destination)
        return out

    def _index_add(self, b: Binding) -> None:
        pass  # routing scans self.bindings: header matching cannot be indexed by key

    def _index_remove(self, b: Binding) -> None:
        pass
