"""AMQP 0-9-1 primitive string types and field tables (the `table` domain), plus the
codec's error types.

Hand-written because field tables are the one part of the wire format the spec XML
does not describe; `spec.py` (generated) calls into this module for every shortstr,
longstr and table argument and property.  Nothing here does I/O.

Field-value type octets follow RabbitMQ, not the 0-9-1 grammar where the two differ
(see RabbitMQ's "AMQP 0-9-1 errata"): 's' is a signed 16-bit integer, not a short
string, and 'l' is a signed 64-bit integer.  'U' (the spec's signed 16) and 'L' (the
spec's signed 64; pika reads it the same way) are accepted on input too.

Python values map onto field types like this when encoding:

    bool -> 't'       int -> 'I' if it fits signed 32 bits, else 'l' (signed 64)
    float -> 'd'      Decimal -> 'D'         str, bytes, bytearray -> 'S'
    ByteArray -> 'x'  Timestamp, datetime -> 'T'
    dict -> 'F'       list, tuple -> 'A'     None -> 'V'

The int rule is RabbitMQ's own (it writes 'I' or 'l'); clients decode both into plain
integers, so the narrower width only saves bytes.  Decoding then encoding a table
therefore keeps every value but may change integer and float widths ('b', 'B', 's',
'u', 'i' all come back as 'I'; 'f' comes back as 'd').  Byte arrays and timestamps are
decoded into the marker types `ByteArray` and `Timestamp` precisely so that they keep
their type octet on the way back out.

Every decoding function raises `AMQPSyntaxError` (a ValueError) on malformed or truncated
input, never IndexError, struct.error or UnicodeDecodeError: the connection turns that
one exception into connection.close 502 SYNTAX_ERROR.
"""

from __future__ import annotations

import calendar
import struct
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

Buffer = bytes | bytearray | memoryview

# Deep enough for anything real (x-death is table -> array -> table), shallow enough
# that a hostile frame of nested 'F's cannot exhaust the Python stack.
MAX_NESTING = 64


# --------------------------------------------------------------------------- errors


# The trailing underscore keeps AMQPSyntaxError from shadowing the builtin SyntaxError;
# AMQPFrameError follows suit so the codec errors read as one family.
class AMQPSyntaxError(ValueError):
    """Malformed or truncated bytes on the wire (AMQP 502 SYNTAX_ERROR: the connection
    picks the code, from node.amqp.errors, the one table of reply codes)."""


class AMQPFrameError(ValueError):
    """A frame that breaks the framing rules: bad end octet, unknown type, too big
    (AMQP 501 FRAME_ERROR)."""


class UnknownMethod(ValueError):
    """A method frame whose class/method id pair is not in the spec.

    The connection picks the reply code (540 NOT_IMPLEMENTED for an unknown class,
    503 COMMAND_INVALID otherwise).
    """

    def __init__(self, class_id: int, method_id: int, message: str | None = None) -> None:
        self.class_id = class_id
        self.method_id = method_id
        super().__init__(message or f"unknown method {class_id}.{method_id}")


# ------------------------------------------------------------------- marker types


class ByteArray(bytes):
    """Bytes that encode as field type 'x' (byte array) rather than 'S' (long string)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"ByteArray({bytes(self)!r})"


class Timestamp(int):
    """Seconds since the epoch that encode as field type 'T' rather than an integer."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Timestamp({int(self)})"


class Long(int):
    """An integer that encodes as field type 'l' (signed 64-bit) whatever its size, as
    RabbitMQ writes the integers it adds to headers (x-delivery-count)."""

    __slots__ = ()


# ------------------------------------------------------------ precompiled structs

_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")
_DECIMAL = struct.Struct(">Bi")

# Encoded type octet + fixed-width value, precompiled for the encoder.
_T_BOOL = (b"t\x00", b"t\x01")
_T_I32 = struct.Struct(">ci")
_T_I64 = struct.Struct(">cq")
_T_F64 = struct.Struct(">cd")
_T_U64 = struct.Struct(">cQ")
_T_DECIMAL = struct.Struct(">cBi")
_T_LEN = struct.Struct(">cI")

_LENGTH_OCTET = [bytes((n,)) for n in range(256)]
_EMPTY_TABLE = b"\x00\x00\x00\x00"

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


# ----------------------------------------------------------------------- strings


def decode_shortstr(buf: Buffer, offset: int) -> tuple[str, int]:
    """Read a shortstr (length octet + UTF-8) at `offset`; return (text, new offset)."""
    try:
        length = buf[offset]
    except IndexError:
        raise AMQPSyntaxError(f"short string truncated: no length octet at offset {offset}") from None
    start = offset + 1
    end = start + length
    if end > len(buf):
        raise AMQPSyntaxError(
            f"short string truncated: length {length} but only {len(buf) - start} bytes left"
        )
    try:
        return str(buf[start:end], "utf-8"), end
    except UnicodeDecodeError as exc:
        raise AMQPSyntaxError(f"short string is not valid UTF-8 ({exc.reason})") from None


def encode_shortstr(value: str | bytes) -> bytes:
    """Length octet + bytes; str is UTF-8 encoded.  ValueError if over 255 bytes."""
    data = _as_bytes(value, "short string")
    length = len(data)
    if length > 255:
        raise ValueError(
            f"short string is {length} bytes; AMQP allows at most 255: {data[:40]!r}..."
        )
    return _LENGTH_OCTET[length] + data


def decode_longstr(buf: Buffer, offset: int) -> tuple[bytes, int]:
    """Read a longstr (32-bit length + octets) at `offset`; return (bytes, new offset).

    Long strings stay bytes: they carry SASL responses, bodies of opaque data and
    locales, none of which the broker should guess an encoding for.
    """
    try:
        (length,) = _U32.unpack_from(buf, offset)
    except struct.error:
        raise AMQPSyntaxError(f"long string truncated: no length at offset {offset}") from None
    start = offset + 4
    end = start + length
    if end > len(buf):
        raise AMQPSyntaxError(
            f"long string truncated: length {length} but only {len(buf) - start} bytes left"
        )
    return bytes(buf[start:end]), end


def encode_longstr(value: str | bytes) -> bytes:
    """32-bit length + bytes; str is UTF-8 encoded."""
    data = _as_bytes(value, "long string")
    return _U32.pack(len(data)) + data


def _as_bytes(value: str | bytes | bytearray | memoryview, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    # bytes(5) would silently produce five zero bytes; refuse anything else.
    raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}: {value!r}")


# ------------------------------------------------------------------ field tables


def decode_table(buf: Buffer, offset: int = 0) -> tuple[dict[str, Any], int]:
    """Read a field table at `offset`; return (dict, offset just past the table)."""
    try:
        return _decode_table(buf, offset, 0)
    except (struct.error, IndexError):
        raise AMQPSyntaxError(f"field table truncated (table at offset {offset})") from None


def decode_field_value(buf: Buffer, offset: int = 0) -> tuple[Any, int]:
    """Read one type octet + value at `offset`; return (value, new offset)."""
    try:
        return _decode_value(buf, offset, 0)
    except (struct.error, IndexError):
        raise AMQPSyntaxError(f"field value truncated (value at offset {offset})") from None


def encode_table(table: Mapping[str, Any] | None) -> bytes:
    """Encode a mapping as a field table (32-bit length + entries); None is empty."""
    if not table:
        return _EMPTY_TABLE
    return _encode_table(table, 0)


def encode_field_value(value: Any) -> bytes:
    """Encode one value as type octet + value, choosing the type as the module says."""
    pieces: list[bytes] = []
    _encode_value(value, pieces, 0)
    return b"".join(pieces)


# The private halves below let struct.error/IndexError propagate from deep inside a
# nested table; the public wrappers above translate them once, which keeps the hot
# loop free of per-value try blocks.


def _decode_table(buf: Buffer, offset: int, depth: int) -> tuple[dict[str, Any], int]:
    if depth > MAX_NESTING:
        raise AMQPSyntaxError(f"field table nested more than {MAX_NESTING} levels deep")
    (length,) = _U32.unpack_from(buf, offset)
    offset += 4
    end = offset + length
    if end > len(buf):
        raise AMQPSyntaxError(
            f"field table truncated: length {length} but only {len(buf) - offset} bytes left"
        )
    result: dict[str, Any] = {}
    while offset < end:
        key, offset = decode_shortstr(buf, offset)
        result[key], offset = _decode_value(buf, offset, depth)
    if offset != end:
        raise AMQPSyntaxError(f"field table entry {key!r} runs {offset - end} bytes past the table")
    return result, offset


def _decode_array(buf: Buffer, offset: int, depth: int) -> tuple[list[Any], int]:
    if depth > MAX_NESTING:
        raise AMQPSyntaxError(f"field array nested more than {MAX_NESTING} levels deep")
    (length,) = _U32.unpack_from(buf, offset)
    offset += 4
    end = offset + length
    if end > len(buf):
        raise AMQPSyntaxError(
            f"field array truncated: length {length} but only {len(buf) - offset} bytes left"
        )
    result: list[Any] = []
    append = result.append
    while offset < end:
        value, offset = _decode_value(buf, offset, depth)
        append(value)
    if offset != end:
        raise AMQPSyntaxError(f"field array element runs {offset - end} bytes past the array")
    return result, offset


def _decode_bytes(buf: Buffer, offset: int, what: str) -> tuple[bytes, int]:
    (length,) = _U32.unpack_from(buf, offset)
    start = offset + 4
    end = start + length
    if end > len(buf):
        raise AMQPSyntaxError(
            f"{what} truncated: length {length} but only {len(buf) - start} bytes left"
        )
    return bytes(buf[start:end]), end


def _decode_value(buf: Buffer, offset: int, depth: int) -> tuple[Any, int]:
    kind = buf[offset]
    offset += 1
    # Ordered roughly by how often clients send each type.
    if kind == 0x53:  # 'S' long string: text if it is UTF-8, else raw bytes
        data, offset = _decode_bytes(buf, offset, "long string field")
        try:
            return data.decode("utf-8"), offset
        except UnicodeDecodeError:
            return data, offset
    if kind == 0x49:  # 'I' signed 32
        return _I32.unpack_from(buf, offset)[0], offset + 4
    if kind == 0x74:  # 't' boolean
        return buf[offset] != 0, offset + 1
    if kind == 0x6C or kind == 0x4C:  # 'l' signed 64 (RabbitMQ), 'L' signed 64 (spec)
        return _I64.unpack_from(buf, offset)[0], offset + 8
    if kind == 0x46:  # 'F' nested table
        return _decode_table(buf, offset, depth + 1)
    if kind == 0x41:  # 'A' array
        return _decode_array(buf, offset, depth + 1)
    if kind == 0x56:  # 'V' void
        return None, offset
    if kind == 0x54:  # 'T' timestamp, seconds, unsigned 64
        return Timestamp(_U64.unpack_from(buf, offset)[0]), offset + 8
    if kind == 0x78:  # 'x' byte array
        data, offset = _decode_bytes(buf, offset, "byte array field")
        return ByteArray(data), offset
    if kind == 0x64:  # 'd' float64
        return _F64.unpack_from(buf, offset)[0], offset + 8
    if kind == 0x66:  # 'f' float32
        return _F32.unpack_from(buf, offset)[0], offset + 4
    if kind == 0x44:  # 'D' decimal: scale octet, signed 32 unscaled value
        scale, raw = _DECIMAL.unpack_from(buf, offset)
        return Decimal(raw).scaleb(-scale), offset + 5
    if kind == 0x62:  # 'b' signed 8
        return _I8.unpack_from(buf, offset)[0], offset + 1
    if kind == 0x42:  # 'B' unsigned 8
        return buf[offset], offset + 1
    if kind == 0x73 or kind == 0x55:  # 's' signed 16 (RabbitMQ), 'U' signed 16 (spec)
        return _I16.unpack_from(buf, offset)[0], offset + 2
    if kind == 0x75:  # 'u' unsigned 16
        return _U16.unpack_from(buf, offset)[0], offset + 2
    if kind == 0x69:  # 'i' unsigned 32
        return _U32.unpack_from(buf, offset)[0], offset + 4
    shown = chr(kind) if 0x20 < kind < 0x7F else f"0x{kind:02x}"
    raise AMQPSyntaxError(f"unknown field value type {shown!r} at offset {offset - 1}")


def _encode_table(table: Mapping[str, Any], depth: int) -> bytes:
    if depth > MAX_NESTING:
        raise ValueError(f"field table nested more than {MAX_NESTING} levels deep")
    pieces: list[bytes] = []
    append = pieces.append
    for key, value in table.items():
        append(encode_shortstr(key))
        _encode_value(value, pieces, depth)
    body = b"".join(pieces)
    return _U32.pack(len(body)) + body


def _encode_value(value: Any, pieces: list[bytes], depth: int) -> None:
    # Exact-type checks come first because they are the common case and cheap; the
    # isinstance chain afterwards catches subclasses.  Order matters: bool before int
    # (bool is an int), Timestamp before int, ByteArray before bytes.
    kind = value.__class__
    if kind is str:
        data = value.encode()
        pieces.append(_T_LEN.pack(b"S", len(data)))
        pieces.append(data)
    elif kind is bool:
        pieces.append(_T_BOOL[value])
    elif kind is int:
        _encode_int(value, pieces)
    elif value is None:
        pieces.append(b"V")
    elif isinstance(value, Mapping):
        pieces.append(b"F")
        pieces.append(_encode_table(value, depth + 1) if value else _EMPTY_TABLE)
    elif isinstance(value, (list, tuple)):
        if depth + 1 > MAX_NESTING:
            raise ValueError(f"field array nested more than {MAX_NESTING} levels deep")
        inner: list[bytes] = []
        for item in value:
            _encode_value(item, inner, depth + 1)
        body = b"".join(inner)
        pieces.append(_T_LEN.pack(b"A", len(body)))
        pieces.append(body)
    elif isinstance(value, ByteArray):
        pieces.append(_T_LEN.pack(b"x", len(value)))
        pieces.append(bytes(value))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        pieces.append(_T_LEN.pack(b"S", len(data)))
        pieces.append(data)
    elif isinstance(value, str):
        _encode_value(str(value), pieces, depth)
    elif isinstance(value, Timestamp):
        pieces.append(_T_U64.pack(b"T", int(value)))
    elif isinstance(value, datetime):
        # Naive datetimes are taken as UTC, as pika does.
        pieces.append(_T_U64.pack(b"T", calendar.timegm(value.utctimetuple())))
    elif isinstance(value, Long):
        pieces.append(_T_I64.pack(b"l", int(value)))
    elif isinstance(value, int):
        _encode_int(int(value), pieces)
    elif isinstance(value, float):
        pieces.append(_T_F64.pack(b"d", value))
    elif isinstance(value, Decimal):
        pieces.append(_encode_decimal(value))
    else:
        raise TypeError(f"cannot encode {kind.__name__} value {value!r} in an AMQP field table")


def _encode_int(value: int, pieces: list[bytes]) -> None:
    if _INT32_MIN <= value <= _INT32_MAX:
        pieces.append(_T_I32.pack(b"I", value))
    elif _INT64_MIN <= value <= _INT64_MAX:
        pieces.append(_T_I64.pack(b"l", value))
    else:
        raise ValueError(f"integer {value} does not fit a signed 64-bit AMQP field value")


def _encode_decimal(value: Decimal) -> bytes:
    if not value.is_finite():
        raise ValueError(f"AMQP decimals must be finite, got {value}")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite, so never 'n'/'N'/'F'
    if exponent > 0:
        scale, raw = 0, int(value)
    else:
        scale = -exponent
        raw = int("".join(map(str, digits)) or "0")
        if sign:
            raw = -raw
    if not (_INT32_MIN <= raw <= _INT32_MAX) or scale > 255:
        # Trailing zeros may be all that makes it too wide (Decimal("1.000...0")).
        normal = value.normalize()
        if normal.as_tuple() != value.as_tuple():
            return _encode_decimal(normal)
        raise ValueError(f"decimal {value} does not fit AMQP's 32-bit value / 8-bit scale")
    return _T_DECIMAL.pack(b"D", scale, raw)
