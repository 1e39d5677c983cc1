"""AMQP 0-9-1 framing, sans-I/O: bytes in -> (type, channel, payload) frames out, and
the encoders for frames the broker sends.

A frame is `type:octet channel:short size:long payload:size frame-end:octet(0xCE)`.
This module owns only that envelope; what a payload means (methods, content headers,
bodies) belongs to `spec.py` and the connection/channel state machines.

`FrameReader.feed` returns payloads as independent `bytes` objects.  That costs one
copy per frame, but a body or content header is routinely kept long after the read
that carried it (queued messages store both), and a memoryview into the read buffer
would pin a whole 64 KiB read in memory for a 10-byte body.
"""

from __future__ import annotations

import struct

from node.amqp.fields import AMQPFrameError
from node.amqp.spec import (
    FRAME_BODY,
    FRAME_END,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    Method,
)

__all__ = [
    "HEARTBEAT_FRAME",
    "PROTOCOL_HEADER",
    "Frame",
    "AMQPFrameError",
    "FrameReader",
    "content_frames",
    "content_header_payload",
    "encode_frame",
    "method_frame",
    "parse_content_header",
]

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

Frame = tuple[int, int, bytes]  # (frame type, channel, payload)

_FRAME_HEADER = struct.Struct(">BHI")  # type, channel, payload size
_HEADER_SIZE = 7
_OVERHEAD = 8  # header + frame-end octet: frame_max counts both
_END = bytes((FRAME_END,))
_CONTENT_HEADER = struct.Struct(">HHQ")  # class id, weight, body size
_VALID_TYPES = frozenset((FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT))

HEARTBEAT_FRAME = _FRAME_HEADER.pack(FRAME_HEARTBEAT, 0, 0) + _END


class FrameReader:
    """Splits a byte stream into frames, buffering a partial frame between feeds.

    `frame_max` is the negotiated maximum frame size including the 8 bytes of
    envelope (0 means no limit, as in connection.tune); set it again after tune-ok.
    A frame is checked (type, size) as soon as its 7-byte header arrives, so an
    oversized frame is refused before its payload is buffered.  After `feed` raises
    AMQPFrameError the stream is unusable: the connection must close.

    The protocol header ("AMQP" 0 0 9 1) is not a frame; strip it before feeding.
    """

    __slots__ = ("_partial", "_frame_max", "_max_payload")

    def __init__(self, frame_max: int = 131072) -> None:
        # Bytes of at most one incomplete frame.  Only this tail is ever copied into a
        # buffer; complete frames are sliced straight out of the data passed to feed().
        self._partial = bytearray()
        self.frame_max = frame_max

    @property
    def frame_max(self) -> int:
        return self._frame_max

    @frame_max.setter
    def frame_max(self, value: int) -> None:
        if value != 0 and value < _OVERHEAD:
            raise ValueError(f"frame_max {value} is smaller than the 8-byte frame envelope")
        self._frame_max = value
        self._max_payload = value - _OVERHEAD if value else 0xFFFFFFFF

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._partial)

    def take_buffered(self) -> bytes:
        """Hand over the bytes of an incomplete frame (a connection that turns into a
        byte pipe passes them on unparsed)."""
        out, self._partial = bytes(self._partial), bytearray()
        return out

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Consume `data`; return every frame it completes, in order."""
        if type(data) is not bytes:
            data = bytes(data)  # payload slices must not alias a mutable buffer
        frames: list[Frame] = []
        pos = 0
        if self._partial:
            pos = self._finish_partial(data, frames)
            if pos < 0:
                return frames

        # Fast path: whole frames sliced directly out of `data`.
        n = len(data)
        unpack = _FRAME_HEADER.unpack_from
        max_payload = self._max_payload
        append = frames.append
        while n - pos >= _HEADER_SIZE:
            ftype, channel, size = unpack(data, pos)
            if ftype not in _VALID_TYPES or size > max_payload:
                self._reject(ftype, channel, size)
            end = pos + _HEADER_SIZE + size  # index of the frame-end octet
            if end >= n:
                break
            if data[end] != FRAME_END:
                raise _bad_end(data[end], ftype, channel, size)
            append((ftype, channel, data[pos + _HEADER_SIZE : end]))
            pos = end + 1
        if pos < n:
            self._partial = bytearray(memoryview(data)[pos:])
        return frames

    def _finish_partial(self, data: bytes, frames: list[Frame]) -> int:
        """Top up the buffered partial frame from `data`.  Returns how much of `data`
        was used, or -1 if all of it was and the frame is still incomplete."""
        partial = self._partial
        pos = 0
        if len(partial) < _HEADER_SIZE:
            pos = _HEADER_SIZE - len(partial)
            partial += data[:pos]
            if len(partial) < _HEADER_SIZE:
                return -1
        ftype, channel, size = _FRAME_HEADER.unpack_from(partial, 0)
        if ftype not in _VALID_TYPES or size > self._max_payload:
            self._reject(ftype, channel, size)
        want = _HEADER_SIZE + size + 1
        take = want - len(partial)
        partial += memoryview(data)[pos : pos + take]
        if len(partial) < want:
            return -1
        if partial[want - 1] != FRAME_END:
            raise _bad_end(partial[want - 1], ftype, channel, size)
        frames.append((ftype, channel, bytes(memoryview(partial)[_HEADER_SIZE : want - 1])))
        # A fresh buffer rather than clear(): no memoryview export can make it fail.
        self._partial = bytearray()
        return pos + take

    def _reject(self, ftype: int, channel: int, size: int) -> None:
        if ftype not in _VALID_TYPES:
            hint = " (a second protocol header?)" if ftype == ord("A") else ""
            raise AMQPFrameError(f"unknown frame type {ftype} on channel {channel}{hint}")
        raise AMQPFrameError(
            f"frame of {size + _OVERHEAD} bytes on channel {channel} exceeds "
            f"the negotiated frame_max {self._frame_max}"
        )


def _bad_end(octet: int, ftype: int, channel: int, size: int) -> AMQPFrameError:
    return AMQPFrameError(
        f"frame end octet is 0x{octet:02X}, expected 0xCE "
        f"(frame type {ftype}, channel {channel}, size {size})"
    )


def encode_frame(frame_type: int, channel: int, payload: bytes | memoryview) -> bytes:
    """One complete frame: header, payload, frame-end."""
    return b"".join((_FRAME_HEADER.pack(frame_type, channel, len(payload)), payload, _END))


def method_frame(channel: int, method: Method) -> bytes:
    """A method frame carrying `method` (any generated spec class)."""
    payload = method.encode()
    return b"".join((_FRAME_HEADER.pack(FRAME_METHOD, channel, len(payload)), payload, _END))


def content_header_payload(class_id: int, body_size: int, properties_bytes: bytes) -> bytes:
    """Content header payload: class id, weight (always 0), body size, property block."""
    return _CONTENT_HEADER.pack(class_id, 0, body_size) + properties_bytes


def content_frames(
    channel: int, header_payload: bytes, body: bytes | memoryview, frame_max: int
) -> list[bytes]:
    """The content header frame and as many body frames as `body` needs.

    Each body frame carries at most frame_max - 8 bytes (frame_max 0 = unlimited); an
    empty body gets no body frame at all, as the spec requires.
    """
    if frame_max and frame_max <= _OVERHEAD:
        raise ValueError(f"frame_max {frame_max} leaves no room for a body")
    frames = [encode_frame(FRAME_HEADER, channel, header_payload)]
    size = len(body)
    chunk = frame_max - _OVERHEAD if frame_max else size
    if size <= chunk:
        if size:
            frames.append(encode_frame(FRAME_BODY, channel, body))
        return frames
    view = memoryview(body)
    for start in range(0, size, chunk):
        frames.append(encode_frame(FRAME_BODY, channel, view[start : start + chunk]))
    return frames


def parse_content_header(payload: bytes | memoryview) -> tuple[int, int, int]:
    """Read a content header payload: (class id, body size, offset of the property
    block).  Weight is ignored (the spec requires 0 and no client sends anything else).
    """
    if len(payload) < _CONTENT_HEADER.size + 2:
        raise AMQPFrameError(
            f"content header payload is {len(payload)} bytes; at least 14 are required"
        )
    class_id, _weight, body_size = _CONTENT_HEADER.unpack_from(payload, 0)
    return class_id, body_size, _CONTENT_HEADER.size
