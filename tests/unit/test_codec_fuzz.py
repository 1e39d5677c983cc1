"""Hostile input: random bytes, truncations and mutations of valid encodings.

Every decoder must either succeed or raise one of the codec's ValueError subclasses
(AMQPSyntaxError, UnknownMethod, AMQPFrameError), quickly.  Anything else (IndexError,
struct.error, UnicodeDecodeError, RecursionError, a hang) would take a connection
down with a traceback instead of a clean connection.close.  Seeds are fixed so a
failure reproduces.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest

from node.amqp import spec
from node.amqp.fields import (
    AMQPFrameError,
    AMQPSyntaxError,
    UnknownMethod,
    decode_field_value,
    decode_table,
    encode_table,
)
from node.amqp.frames import FrameReader, encode_frame, parse_content_header

pytestmark = pytest.mark.timeout(120)

CODEC_ERRORS = (AMQPSyntaxError, UnknownMethod, AMQPFrameError)

SAMPLE_TABLE = {
    "s": "text",
    "i": -5,
    "l": 2**40,
    "t": True,
    "d": 1.5,
    "x": [1, "a", None, {"n": {"m": []}}],
    "f": {"inner": "v"},
}


def valid_method_payloads() -> list[bytes]:
    payloads = []
    for cls in spec.METHODS.values():
        kwargs: dict[str, Any] = {}
        for name in cls.__slots__:
            default = getattr(cls(), name)
            if isinstance(default, bool):
                kwargs[name] = True
            elif isinstance(default, int):
                kwargs[name] = 3
            elif isinstance(default, str):
                kwargs[name] = "name.ü"
            elif isinstance(default, bytes):
                kwargs[name] = b"\x00blob"
            elif isinstance(default, dict):
                kwargs[name] = SAMPLE_TABLE
        payloads.append(cls(**kwargs).encode())
    return payloads


VALID_PROPERTIES = spec.BasicProperties(
    content_type="text/plain",
    headers=SAMPLE_TABLE,
    delivery_mode=2,
    priority=1,
    message_id="m",
    timestamp=5,
    app_id="app",
).encode()


def mutate(rng: random.Random, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if not data or choice < 0.4:
            data.insert(rng.randint(0, len(data)), rng.randrange(256))
        elif choice < 0.8:
            data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            del data[rng.randrange(len(data))]
    return bytes(data)


def check(fn, data) -> Any:
    try:
        return fn(data)
    except CODEC_ERRORS:
        return None
    except Exception as exc:  # pragma: no cover - the failure being hunted
        raise AssertionError(f"{fn.__name__}({bytes(data)!r}) raised {exc!r}") from exc


def test_random_bytes_to_decode_method():
    rng = random.Random(1)
    indexes = list(spec.METHODS)
    for _ in range(5000):
        body = rng.randbytes(rng.randint(0, 64))
        # Half the time aim at a real method so the argument decoders get exercised.
        if rng.random() < 0.5:
            body = struct.pack(">I", rng.choice(indexes)) + body
        method = check(spec.decode_method, body)
        if method is not None:
            # Whatever decodes must re-encode, and re-decode to the same thing.
            again = method.encode()
            assert spec.decode_method(again).encode() == again


def test_truncated_methods_raise_syntax_error():
    for payload in valid_method_payloads():
        assert spec.decode_method(payload) is not None
        for cut in range(len(payload)):
            with pytest.raises(AMQPSyntaxError):
                spec.decode_method(payload[:cut])


def test_mutated_methods():
    rng = random.Random(2)
    payloads = valid_method_payloads()
    for _ in range(5000):
        method = check(spec.decode_method, mutate(rng, rng.choice(payloads)))
        if method is not None:
            again = method.encode()
            assert spec.decode_method(again).encode() == again


def test_random_and_mutated_tables():
    rng = random.Random(3)
    valid = encode_table(SAMPLE_TABLE)
    for i in range(8000):
        if i % 2:
            data = mutate(rng, valid)
        else:
            data = struct.pack(">I", rng.randint(0, 40)) + rng.randbytes(rng.randint(0, 40))
        result = check(lambda d: decode_table(d, 0), data)
        if result is not None:
            table, _ = result
            again = encode_table(table)
            assert encode_table(decode_table(again, 0)[0]) == again
    for cut in range(len(valid)):
        with pytest.raises(AMQPSyntaxError):
            decode_table(valid[:cut], 0)


def test_random_field_values():
    rng = random.Random(4)
    for _ in range(5000):
        data = bytes([rng.choice(b"tbBsuUIilLfdDSAxTFVZ")]) + rng.randbytes(rng.randint(0, 20))
        check(lambda d: decode_field_value(d, 0), data)


def test_random_and_mutated_properties():
    rng = random.Random(5)
    for i in range(5000):
        data = mutate(rng, VALID_PROPERTIES) if i % 2 else rng.randbytes(rng.randint(0, 40))
        props = check(spec.BasicProperties.decode, data)
        mode = check(spec.delivery_mode_of, data)
        if props is not None:
            assert mode == (props.delivery_mode or 0)
            again = props.encode()
            assert spec.BasicProperties.decode(again) == props
    for cut in range(len(VALID_PROPERTIES)):
        with pytest.raises(AMQPSyntaxError):
            spec.BasicProperties.decode(VALID_PROPERTIES[:cut])


def test_random_content_headers():
    rng = random.Random(6)
    for _ in range(2000):
        check(parse_content_header, rng.randbytes(rng.randint(0, 30)))


def test_random_streams_to_frame_reader():
    rng = random.Random(7)
    valid = b"".join(
        encode_frame(t, rng.randrange(3), rng.randbytes(rng.randint(0, 50)))
        for t in (1, 2, 3, 8) * 5
    )
    for i in range(3000):
        stream = mutate(rng, valid) if i % 2 else rng.randbytes(rng.randint(0, 200))
        reader = FrameReader(frame_max=4096)
        try:
            pos = 0
            while pos < len(stream):
                step = rng.randint(1, 64)
                for ftype, channel, payload in reader.feed(stream[pos : pos + step]):
                    assert ftype in (1, 2, 3, 8)
                    assert 0 <= channel <= 0xFFFF
                    assert type(payload) is bytes and len(payload) <= 4096 - 8
                pos += step
        except AMQPFrameError:
            pass
