"""Field tables and string primitives (node/amqp/fields.py), including interop with
pika's table codec in both directions."""

from __future__ import annotations

import calendar
import math
import struct
from datetime import datetime, timezone
from decimal import Decimal

import pika.data
import pytest

from node.amqp.fields import (
    MAX_NESTING,
    AMQPSyntaxError,
    ByteArray,
    Timestamp,
    decode_field_value,
    decode_longstr,
    decode_shortstr,
    decode_table,
    encode_field_value,
    encode_longstr,
    encode_shortstr,
    encode_table,
)


def pika_encode(table: dict) -> bytes:
    pieces: list[bytes] = []
    pika.data.encode_table(pieces, table)
    return b"".join(pieces)


def roundtrip(value):
    encoded = encode_field_value(value)
    decoded, end = decode_field_value(encoded, 0)
    assert end == len(encoded)
    return encoded[:1], decoded


# ------------------------------------------------------------------ strings


def test_shortstr_roundtrip_and_offset():
    buf = b"xx" + encode_shortstr("héllo") + b"yy"
    assert decode_shortstr(buf, 2) == ("héllo", 2 + 1 + len("héllo".encode()))
    assert encode_shortstr(b"raw") == b"\x03raw"
    assert encode_shortstr("") == b"\x00"
    assert decode_shortstr(memoryview(b"\x02ok"), 0) == ("ok", 3)


def test_shortstr_limits_and_errors():
    assert encode_shortstr("a" * 255)[0] == 255
    with pytest.raises(ValueError, match="255"):
        encode_shortstr("a" * 256)
    with pytest.raises(AMQPSyntaxError, match="truncated"):
        decode_shortstr(b"\x05abc", 0)
    with pytest.raises(AMQPSyntaxError, match="truncated"):
        decode_shortstr(b"", 0)
    with pytest.raises(AMQPSyntaxError, match="UTF-8"):
        decode_shortstr(b"\x02\xff\xfe", 0)


@pytest.mark.parametrize("bad", [5, None, 1.5])
def test_string_encoders_refuse_non_strings(bad):
    with pytest.raises(TypeError, match="must be str or bytes"):
        encode_shortstr(bad)
    with pytest.raises(TypeError, match="must be str or bytes"):
        encode_longstr(bad)


def test_longstr_roundtrip_and_errors():
    assert encode_longstr("é") == b"\x00\x00\x00\x02\xc3\xa9"
    assert decode_longstr(encode_longstr(b"\x00\xff"), 0) == (b"\x00\xff", 6)
    data, end = decode_longstr(memoryview(b"\x00\x00\x00\x01z"), 0)
    assert (data, end) == (b"z", 5) and type(data) is bytes
    with pytest.raises(AMQPSyntaxError, match="truncated"):
        decode_longstr(b"\x00\x00\x00\x09abc", 0)
    with pytest.raises(AMQPSyntaxError, match="truncated"):
        decode_longstr(b"\x00\x00", 0)


# --------------------------------------------------------------- field values


@pytest.mark.parametrize(
    "value, kind",
    [
        (True, b"t"),
        (False, b"t"),
        (0, b"I"),
        (2**31 - 1, b"I"),
        (-(2**31), b"I"),
        (2**31, b"l"),
        (-(2**31) - 1, b"l"),
        (2**63 - 1, b"l"),
        (-(2**63), b"l"),
        (1.25, b"d"),
        (-0.0, b"d"),
        (math.inf, b"d"),
        ("text ✓", b"S"),
        ("", b"S"),
        (Decimal("1.5"), b"D"),
        (Decimal("-12.345"), b"D"),
        (Decimal("0"), b"D"),
        (Decimal("1.50"), b"D"),
        (ByteArray(b"\x00\x01\xff"), b"x"),
        (Timestamp(1_700_000_000), b"T"),
        (Timestamp(2**64 - 1), b"T"),
        ({"a": 1, "nested": {"b": [1, "x"]}}, b"F"),
        ({}, b"F"),
        ([1, "two", None, [True]], b"A"),
        ([], b"A"),
        (None, b"V"),
    ],
)
def test_value_roundtrips_with_its_type(value, kind):
    got_kind, decoded = roundtrip(value)
    assert got_kind == kind
    assert decoded == value
    assert type(decoded) is type(value)


def test_decimal_keeps_its_scale():
    _, decoded = roundtrip(Decimal("1.50"))
    assert decoded.as_tuple() == Decimal("1.50").as_tuple()
    assert encode_field_value(Decimal("-0.001")) == b"D" + struct.pack(">Bi", 3, -1)
    # Positive exponents are written unscaled.
    assert encode_field_value(Decimal("1E+2")) == b"D" + struct.pack(">Bi", 0, 100)
    # Too wide only because of trailing zeros: falls back to the normalized form.
    assert roundtrip(Decimal("1." + "0" * 20))[1] == 1


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), Decimal(2**40)])
def test_unencodable_decimals(value):
    with pytest.raises(ValueError):
        encode_field_value(value)


def test_other_encodings():
    # bytes-like values go out as long strings; tuples as arrays; datetimes as 'T'.
    assert encode_field_value(b"ab") == b"S\x00\x00\x00\x02ab"
    assert encode_field_value(bytearray(b"ab")) == b"S\x00\x00\x00\x02ab"
    assert encode_field_value((1,)) == encode_field_value([1])
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert decode_field_value(encode_field_value(when))[0] == calendar.timegm(when.utctimetuple())
    assert decode_field_value(encode_field_value(when.replace(tzinfo=None)))[0] == int(
        when.timestamp()
    )


def test_encoding_errors():
    with pytest.raises(ValueError, match="64-bit"):
        encode_field_value(2**63)
    with pytest.raises(TypeError, match="set"):
        encode_field_value({1, 2})
    with pytest.raises(ValueError, match="255"):
        encode_table({"k" * 256: 1})


@pytest.mark.parametrize(
    "wire, expected",
    [
        (b"b\xff", -1),
        (b"B\xff", 255),
        (b"s\xff\xfe", -2),
        (b"U\xff\xfe", -2),
        (b"u\xff\xfe", 65534),
        (b"I\xff\xff\xff\xfe", -2),
        (b"i\xff\xff\xff\xfe", 2**32 - 2),
        (b"l" + struct.pack(">q", -5), -5),
        (b"L" + struct.pack(">q", -5), -5),  # the spec's 'L' is signed, as pika reads it
        (b"f" + struct.pack(">f", 0.5), 0.5),
        (b"d" + struct.pack(">d", -2.5), -2.5),
        (b"D\x02\xff\xff\xff\x85", Decimal("-1.23")),
        (b"t\x02", True),
        (b"t\x00", False),
        (b"S\x00\x00\x00\x02\xff\xfe", b"\xff\xfe"),  # not UTF-8: stays bytes
        (b"S\x00\x00\x00\x02hi", "hi"),
        (b"x\x00\x00\x00\x01\x00", ByteArray(b"\x00")),
        (b"T" + struct.pack(">Q", 42), Timestamp(42)),
        (b"V", None),
        (b"A\x00\x00\x00\x00", []),
        (b"F\x00\x00\x00\x00", {}),
    ],
)
def test_decodes_every_wire_type(wire, expected):
    value, end = decode_field_value(wire + b"trailing", 0)
    assert end == len(wire)
    assert value == expected
    assert type(value) is type(expected)


# --------------------------------------------------------------------- tables


ALL_TYPES_TABLE = {
    "bool": True,
    "int": -7,
    "long": 2**40,
    "float": 3.5,
    "decimal": Decimal("12.34"),
    "str": "héllo",
    "bytes-as-S": b"\xff\x00",
    "bytearray": ByteArray(b"\x01\x02"),
    "timestamp": Timestamp(1_700_000_000),
    "table": {"inner": {"deeper": [1, 2, {"x": None}]}},
    "array": [1, "a", False, None, 2.5, [], {}],
    "void": None,
}


def test_table_roundtrip_all_types():
    encoded = encode_table(ALL_TYPES_TABLE)
    decoded, end = decode_table(b"\x00" + encoded, 1)
    assert end == len(encoded) + 1
    expected = dict(ALL_TYPES_TABLE)
    expected["bytes-as-S"] = b"\xff\x00"  # not UTF-8, so it comes back as bytes
    assert decoded == expected
    assert encode_table(decoded) == encoded


def test_empty_and_none_tables():
    assert encode_table(None) == b"\x00\x00\x00\x00"
    assert encode_table({}) == b"\x00\x00\x00\x00"
    assert decode_table(b"\x00\x00\x00\x00", 0) == ({}, 4)


def test_table_decodes_from_memoryview():
    encoded = encode_table({"k": "v", "n": [1, 2]})
    assert decode_table(memoryview(encoded), 0)[0] == {"k": "v", "n": [1, 2]}


def test_pika_encoded_table_decodes_to_same_values():
    when = datetime(2023, 5, 6, 7, 8, 9)
    table = {
        "s": "text ✓",
        "b": b"\x00\x01",
        "t": True,
        "f": False,
        "i": 42,
        "neg": -(2**31),
        "big": 2**40,
        "d": Decimal("3.14"),
        "dt": when,
        "tbl": {"x-death": [{"count": 1, "reason": "expired"}]},
        "arr": [1, "two", [3]],
        "none": None,
    }
    decoded, _ = decode_table(pika_encode(table), 0)
    assert decoded["s"] == "text ✓"
    assert decoded["b"] == b"\x00\x01" and isinstance(decoded["b"], ByteArray)  # pika sends 'x'
    assert decoded["t"] is True and decoded["f"] is False
    assert decoded["i"] == 42 and decoded["neg"] == -(2**31) and decoded["big"] == 2**40
    assert decoded["d"] == Decimal("3.14")
    assert decoded["dt"] == calendar.timegm(when.utctimetuple())
    assert isinstance(decoded["dt"], Timestamp)
    assert decoded["tbl"] == {"x-death": [{"count": 1, "reason": "expired"}]}
    assert decoded["arr"] == [1, "two", [3]]
    assert decoded["none"] is None


def test_our_table_decodes_with_pika():
    table = {
        "s": "text ✓",
        "bytes": b"ab",
        "x": ByteArray(b"\x00\xff"),
        "t": True,
        "i": -42,
        "big": -(2**40),
        "d": Decimal("-3.14"),
        "ts": Timestamp(1_700_000_000),
        "tbl": {"a": {"b": [1, {"c": "d"}]}},
        "arr": [1, "two", None],
        "none": None,
    }
    decoded, end = pika.data.decode_table(encode_table(table), 0)
    assert end == len(encode_table(table))
    assert decoded["s"] == "text ✓"
    assert decoded["bytes"] == "ab"  # 'S', which pika turns into text
    assert decoded["x"] == b"\x00\xff"
    assert decoded["t"] is True
    assert decoded["i"] == -42 and decoded["big"] == -(2**40)
    assert decoded["d"] == Decimal("-3.14")
    assert decoded["ts"] == datetime.fromtimestamp(1_700_000_000, timezone.utc)
    assert decoded["tbl"] == {"a": {"b": [1, {"c": "d"}]}}
    assert decoded["arr"] == [1, "two", None]
    assert decoded["none"] is None


def test_pika_compatible_bytes_for_common_values():
    # Where both libraries make the same type choice the bytes are identical.
    table = {"a": "str", "b": 1, "c": 2**40, "d": True, "e": Decimal("1.5"), "f": {"g": [None]}}
    assert encode_table(table) == pika_encode(table)


# --------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    "wire, message",
    [
        (b"\x00\x00\x00\x05\x01k", "truncated"),  # declared length beyond the buffer
        (b"\x00\x00", "truncated"),  # no length
        (b"\x00\x00\x00\x03\x01kZ", "unknown field value type 'Z'"),
        (b"\x00\x00\x00\x03\x01k\x00", "unknown field value type '0x00'"),
        (b"\x00\x00\x00\x04\x01kI\x00\x00\x00\x00", "past the table"),  # overruns its table
        (b"\x00\x00\x00\x03\x01\xffV", "UTF-8"),  # key is not UTF-8
        (b"\x00\x00\x00\x07\x01kA\x00\x00\x00\x01", "truncated"),
        (b"\x00\x00\x00\x0b\x01kA\x00\x00\x00\x01I\x00\x00\x00\x00", "past the array"),
        (b"\x00\x00\x00\x03\x01kS", "truncated"),
    ],
)
def test_malformed_tables_raise_syntax_error(wire, message):
    with pytest.raises(AMQPSyntaxError, match=message):
        decode_table(wire, 0)


def test_deep_nesting_is_refused_not_a_recursion_error():
    wire = b"V"
    for _ in range(MAX_NESTING + 5):
        wire = b"A" + struct.pack(">I", len(wire)) + wire
    with pytest.raises(AMQPSyntaxError, match="nested"):
        decode_field_value(wire, 0)
    deep: list = []
    for _ in range(MAX_NESTING + 5):
        deep = [deep]
    with pytest.raises(ValueError, match="nested"):
        encode_field_value(deep)


def test_nesting_at_the_limit_is_fine():
    value: dict = {}
    for _ in range(MAX_NESTING):
        value = {"k": value}
    assert decode_table(encode_table(value), 0)[0] == value
