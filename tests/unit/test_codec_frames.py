"""Framing (node/amqp/frames.py): the incremental reader and the frame encoders."""

from __future__ import annotations

import struct
import time

import pika.frame
import pika.spec
import pytest

from node.amqp import spec
from node.amqp.fields import AMQPFrameError
from node.amqp.frames import (
    HEARTBEAT_FRAME,
    PROTOCOL_HEADER,
    FrameReader,
    content_frames,
    content_header_payload,
    encode_frame,
    method_frame,
    parse_content_header,
)


def sample_stream() -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """A realistic mix: method, content header, two body frames, heartbeat, empty body."""
    publish = spec.BasicPublish(exchange="ex", routing_key="rk").encode()
    header = content_header_payload(60, 7, spec.BasicProperties(delivery_mode=2).encode())
    expected = [
        (1, 1, publish),
        (2, 1, header),
        (3, 1, b"abcd"),
        (3, 1, b"efg"),
        (8, 0, b""),
        (1, 65535, spec.ChannelCloseOk().encode()),
    ]
    stream = b"".join(encode_frame(t, c, p) for t, c, p in expected)
    return stream, expected


def test_protocol_header_and_heartbeat():
    assert PROTOCOL_HEADER == b"AMQP\x00\x00\x09\x01"
    assert HEARTBEAT_FRAME == b"\x08\x00\x00\x00\x00\x00\x00\xce"
    assert HEARTBEAT_FRAME == pika.frame.Heartbeat().marshal()


def test_encode_frame_layout():
    assert encode_frame(1, 5, b"xy") == b"\x01\x00\x05\x00\x00\x00\x02xy\xce"
    assert encode_frame(3, 1, memoryview(b"body")) == b"\x03\x00\x01\x00\x00\x00\x04body\xce"


def test_method_frame_matches_pika():
    method = spec.BasicDeliver("ctag", 9, True, "ex", "rk")
    theirs = pika.frame.Method(3, pika.spec.Basic.Deliver("ctag", 9, True, "ex", "rk"))
    assert method_frame(3, method) == theirs.marshal()


def test_content_header_matches_pika():
    props = dict(content_type="text/plain", delivery_mode=2, headers={"a": 1})
    ours = encode_frame(
        2, 4, content_header_payload(60, 1234, spec.BasicProperties(**props).encode())
    )
    theirs = pika.frame.Header(4, 1234, pika.spec.BasicProperties(**props)).marshal()
    assert ours == theirs


def test_parse_content_header():
    props = spec.BasicProperties(content_type="a/b").encode()
    payload = content_header_payload(60, 2**40, props)
    class_id, body_size, offset = parse_content_header(payload)
    assert (class_id, body_size, offset) == (60, 2**40, 12)
    assert spec.BasicProperties.decode(payload, offset).content_type == "a/b"
    assert parse_content_header(memoryview(payload)) == (60, 2**40, 12)
    for cut in range(14):
        with pytest.raises(AMQPFrameError, match="content header"):
            parse_content_header(payload[:cut])


# ------------------------------------------------------------------- reader


def test_many_frames_in_one_feed():
    stream, expected = sample_stream()
    reader = FrameReader()
    assert reader.feed(stream) == expected
    assert reader.buffered == 0
    assert reader.feed(stream * 50) == expected * 50


def test_split_at_every_boundary():
    stream, expected = sample_stream()
    for cut in range(len(stream) + 1):
        reader = FrameReader()
        frames = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert frames == expected, f"split at {cut}"
        assert reader.buffered == 0


def test_split_at_every_pair_of_boundaries():
    stream, expected = sample_stream()
    stream = stream[:60]  # the first frames: enough to cross header/payload/end in 3 parts
    reader_frames = FrameReader().feed(stream)
    for a in range(len(stream) + 1):
        for b in range(a, len(stream) + 1):
            reader = FrameReader()
            got = reader.feed(stream[:a]) + reader.feed(stream[a:b]) + reader.feed(stream[b:])
            assert got == reader_frames, (a, b)


def test_byte_at_a_time():
    stream, expected = sample_stream()
    reader = FrameReader()
    frames = []
    for i in range(len(stream)):
        frames += reader.feed(stream[i : i + 1])
    assert frames == expected


def test_payloads_are_immutable_and_survive_later_feeds():
    stream, expected = sample_stream()
    reader = FrameReader()
    data = bytearray(stream)
    first = reader.feed(data[:30]) + reader.feed(data[30:])
    data[:] = b"\x00" * len(data)  # the caller reuses its buffer
    reader.feed(stream)
    assert first == expected
    assert all(type(payload) is bytes for _, _, payload in first)


def test_memoryview_input():
    stream, expected = sample_stream()
    assert FrameReader().feed(memoryview(stream)) == expected


def test_bad_frame_end():
    frame = bytearray(encode_frame(1, 1, b"hello"))
    frame[-1] = 0x00
    with pytest.raises(AMQPFrameError, match="frame end octet is 0x00"):
        FrameReader().feed(bytes(frame))
    # Also when the bad end arrives in a later read.
    reader = FrameReader()
    assert reader.feed(bytes(frame[:5])) == []
    with pytest.raises(AMQPFrameError, match="frame end"):
        reader.feed(bytes(frame[5:]))


def test_unknown_frame_type():
    with pytest.raises(AMQPFrameError, match="unknown frame type 4"):
        FrameReader().feed(encode_frame(4, 0, b""))
    # A client that sends the protocol header twice gets a hint.
    with pytest.raises(AMQPFrameError, match="protocol header"):
        FrameReader().feed(PROTOCOL_HEADER)


def test_oversized_frame_is_refused_from_its_header():
    reader = FrameReader(frame_max=4096)
    assert reader.feed(encode_frame(3, 1, b"x" * (4096 - 8))) == [(3, 1, b"x" * 4088)]
    # Refused as soon as the 7 header bytes are in, before any payload is buffered.
    with pytest.raises(AMQPFrameError, match="exceeds the negotiated frame_max 4096"):
        reader.feed(struct.pack(">BHI", 3, 1, 4096 - 7))
    reader = FrameReader(frame_max=4096)
    reader.feed(b"\x03\x00")
    with pytest.raises(AMQPFrameError, match="frame_max"):
        reader.feed(b"\x01\x00\x00\x10\x00")


def test_frame_max_can_change_after_tune():
    reader = FrameReader()
    assert reader.frame_max == 131072
    big = encode_frame(3, 1, b"y" * 200_000)
    with pytest.raises(AMQPFrameError):
        FrameReader().feed(big)
    reader.frame_max = 0  # 0 = no limit, as in connection.tune
    assert reader.feed(big) == [(3, 1, b"y" * 200_000)]
    reader.frame_max = 4096
    with pytest.raises(AMQPFrameError):
        reader.feed(encode_frame(3, 1, b"z" * 5000))
    with pytest.raises(ValueError):
        reader.frame_max = 7


def test_large_frame_in_small_reads_is_linear():
    # A 16 MiB frame fed 4 KiB at a time: a reader that re-copied its buffer on every
    # feed would move ~32 GiB here; a linear one finishes in milliseconds.
    body = bytes(range(256)) * (16 * 4096)
    stream = encode_frame(3, 1, body)
    reader = FrameReader(frame_max=0)
    frames = []
    started = time.perf_counter()
    for i in range(0, len(stream), 4096):
        frames += reader.feed(stream[i : i + 4096])
    elapsed = time.perf_counter() - started
    assert frames == [(3, 1, body)]
    assert elapsed < 2.0, f"{elapsed:.2f}s for 4096 feeds"


# ------------------------------------------------------------------ content


def test_content_frames_split_body():
    header = content_header_payload(60, 10, b"\x00\x00")
    frames = content_frames(7, header, b"0123456789", frame_max=12)  # 4 bytes per body frame
    parsed = FrameReader().feed(b"".join(frames))
    assert parsed == [(2, 7, header), (3, 7, b"0123"), (3, 7, b"4567"), (3, 7, b"89")]


@pytest.mark.parametrize("size", [0, 1, 4087, 4088, 4089, 8176, 10_000])
def test_content_frames_sizes(size):
    body = bytes(i % 251 for i in range(size))
    header = content_header_payload(60, size, b"\x00\x00")
    frames = content_frames(1, header, body, frame_max=4096)
    assert all(len(f) <= 4096 for f in frames)
    parsed = FrameReader(frame_max=4096).feed(b"".join(frames))
    assert parsed[0] == (2, 1, header)
    assert b"".join(p for _, _, p in parsed[1:]) == body
    assert len(parsed) - 1 == -(-size // 4088)  # no body frame for an empty body


def test_content_frames_unlimited_and_memoryview_body():
    body = memoryview(b"x" * 100_000)
    frames = content_frames(1, b"h" * 14, body, frame_max=0)
    assert len(frames) == 2
    with pytest.raises(ValueError):
        content_frames(1, b"h" * 14, b"x", frame_max=8)
