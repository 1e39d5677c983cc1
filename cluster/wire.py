"""Frames of the sessions between nodes on the cluster port (after its handshake, in
node/clients/forwarding.py, where both ends prove the cluster secret).

A frame is ``length (4 bytes, big-endian) + kind (1 byte) + body``, then, unless the
session runs on TLS, a 16-byte MAC: HMAC-SHA256 under the session key of that direction
(derived from the secret and both ends' nonces) of the frame's sequence number and bytes.
So a frame injected into the TCP stream, replayed, reordered or dropped fails the session
instead of counting as an ack or a record, and a frame of one session or direction is
worth nothing in another.  Kind RECORD carries a change-log record as ``offset (8) +
epoch (8) + payload``, so the store's msgpack bytes go out untouched; kind MESSAGE (the
queue links, node/shards/link.py) carries ``meta length (4) + msgpack meta + a message's
store record``, so a message crosses a link as the bytes its store keeps; every other
kind's body is one msgpack map.  Nothing is ever unpickled, and a peer's frame is bounded
(`MAX_FRAME`), so a broken or hostile peer costs a closed session, not memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import struct
from typing import Any

import msgpack

log = logging.getLogger("warren.cluster.wire")

CONTROL = 0  # msgpack map
RECORD = 1  # offset, epoch, record payload
ACK = 2  # epoch, offset: everything up to offset is durable here
MESSAGE = 3  # queue links: msgpack meta, then a message's store record untouched

# A record is one store transaction: bounded by the store's batch limits (16 MiB of
# records plus overhead); a snapshot chunk is ~4 MiB.
MAX_FRAME = 64 << 20

MAC_SIZE = 16
# a frame this small is sent with its MAC in one write (one copy, one syscall); a larger
# one as two writes (no copy of the payload)
_JOIN_BELOW = 64 << 10

_HEAD = struct.Struct(">IB")
_SEQ = struct.Struct(">Q")
_RECORD_HEAD = struct.Struct(">IBqq")
_ACK = struct.Struct(">IBqq")
_MESSAGE_HEAD = struct.Struct(">IBI")
_META_SIZE = struct.Struct(">I")


class WireError(Exception):
    """The peer sent something that is not a frame of this protocol."""


class Seal:
    """The MACs of one direction of one session: each frame's MAC covers its sequence
    number, so the receiving end, counting too, refuses a frame out of its place."""

    __slots__ = ("_base", "_seq")

    def __init__(self, key: bytes) -> None:
        self._base = hmac.new(key, digestmod=hashlib.sha256)
        self._seq = 0

    def mac(self, frame: bytes | memoryview) -> bytes:
        h = self._base.copy()
        h.update(_SEQ.pack(self._seq))
        h.update(frame)
        self._seq += 1
        return h.digest()[:MAC_SIZE]


class Link:
    """What the cluster port's handshake established for a session: the keys of its two
    directions (None when the session runs on TLS, which authenticates every byte
    already) and the bytes read past the handshake."""

    __slots__ = ("send_key", "receive_key", "early")

    def __init__(self, send_key: bytes | None, receive_key: bytes | None,
                 early: bytes = b"") -> None:
        self.send_key = send_key
        self.receive_key = receive_key
        self.early = early


def control(message: dict[str, Any]) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return _HEAD.pack(len(body) + 1, CONTROL) + body


def record(offset: int, epoch: int, payload: bytes) -> bytes:
    return _RECORD_HEAD.pack(len(payload) + 17, RECORD, offset, epoch) + payload


def ack(epoch: int, offset: int) -> bytes:
    return _ACK.pack(17, ACK, epoch, offset)


def message(meta: Any, record: bytes) -> bytes:
    m = msgpack.packb(meta, use_bin_type=True)
    return _MESSAGE_HEAD.pack(len(m) + len(record) + 5, MESSAGE, len(m)) + m + record


class FramedProtocol(asyncio.Protocol):
    """Splits the byte stream into frames and hands each to `frame_received`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._send_seal: Seal | None = None
        self._receive_seal: Seal | None = None
        self._trailer = 0
        self._paused_writing = False
        self._drained: asyncio.Future[None] | None = None
        self._frames_held = False  # frames read stay in the buffer (`hold_frames`)
        self.closed: asyncio.Future[None] = asyncio.get_event_loop().create_future()

    def take_over(self, transport: asyncio.Transport, link: Link) -> None:
        """Become the protocol of a transport the cluster port's handshake opened (it
        stopped reading there, so that no byte lands in the handshake's protocol)."""
        if link.send_key is not None and link.receive_key is not None:
            self._send_seal = Seal(link.send_key)
            self._receive_seal = Seal(link.receive_key)
            self._trailer = MAC_SIZE
        transport.set_protocol(self)
        self.connection_made(transport)
        if link.early:
            self.data_received(link.early)
        transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        seal, trailer = self._receive_seal, self._trailer
        try:
            while len(buf) - pos >= 5 and not self._frames_held:
                size, kind = _HEAD.unpack_from(buf, pos)
                if size > MAX_FRAME or size < 1:
                    raise WireError(f"frame of {size} bytes")
                end = pos + 4 + size
                if len(buf) < end + trailer:
                    break
                if seal is not None:
                    with memoryview(buf) as view:
                        mac = seal.mac(view[pos:end])
                        if not hmac.compare_digest(mac, view[end:end + trailer]):
                            raise WireError("a frame without the session's MAC (forged, "
                                            "replayed or out of order)")
                body = bytes(buf[pos + 5:end])
                pos = end + trailer
                self.frame_received(kind, body)
                if self.transport is None or self.transport.is_closing():
                    return
        except (WireError, ValueError, msgpack.ExtraData, msgpack.FormatError,
                msgpack.StackError, struct.error) as e:
            self.fail(f"malformed frame: {e}")
            return
        finally:
            if pos:
                del buf[:pos]

    def frame_received(self, kind: int, body: bytes) -> None:
        raise NotImplementedError

    def hold_frames(self) -> None:
        """Handle no more frames, from the one after the current on, until
        `release_frames` (the socket is no longer read meanwhile)."""
        self._frames_held = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def release_frames(self) -> None:
        self._frames_held = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            self.data_received(b"")  # the frames that waited in the buffer

    @staticmethod
    def decode_control(body: bytes) -> dict[str, Any]:
        message = msgpack.unpackb(body, raw=False)
        if not isinstance(message, dict):
            raise WireError("control frame is not a map")
        return message

    @staticmethod
    def decode_record(body: bytes) -> tuple[int, int, bytes]:
        if len(body) < 16:
            raise WireError("short record frame")
        offset, epoch = struct.unpack_from(">qq", body)
        return offset, epoch, body[16:]

    @staticmethod
    def decode_message(body: bytes) -> tuple[Any, bytes]:
        if len(body) < 4:
            raise WireError("short message frame")
        (size,) = _META_SIZE.unpack_from(body)
        if 4 + size > len(body):
            raise WireError("bad message frame")
        return msgpack.unpackb(body[4:4 + size], raw=False), body[4 + size:]

    @staticmethod
    def decode_ack(body: bytes) -> tuple[int, int]:
        if len(body) != 16:
            raise WireError("bad ack frame")
        epoch, offset = struct.unpack_from(">qq", body)
        return epoch, offset

    def send(self, frame: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        seal = self._send_seal
        if seal is None:
            transport.write(frame)
        elif len(frame) < _JOIN_BELOW:
            transport.write(frame + seal.mac(frame))
        else:
            transport.write(frame)
            transport.write(seal.mac(frame))

    def send_many(self, frames: list[bytes]) -> None:
        """Several frames in one write (one syscall for a batch of small frames)."""
        transport = self.transport
        if transport is None or transport.is_closing() or not frames:
            return
        seal = self._send_seal
        if seal is None:
            transport.write(b"".join(frames))
            return
        parts: list[bytes] = []
        for frame in frames:
            parts.append(frame)
            parts.append(seal.mac(frame))
        transport.write(b"".join(parts))

    def fail(self, why: str) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        log.warning("cluster session with %s closed: %s", peer, why)
        if self.transport is not None:
            self.transport.abort()

    # back-pressure: a sender awaits drain() when the peer reads slower than we write
    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def drain(self) -> None:
        if self._paused_writing:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    def connection_lost(self, exc: Exception | None) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(ConnectionError("session closed"))
        if not self.closed.done():
            self.closed.set_result(None)


class _Closing(FramedProtocol):
    def frame_received(self, kind: int, body: bytes) -> None:
        pass


def say_and_close(transport: asyncio.Transport, link: Link, message: dict[str, Any]) -> None:
    """Answer a session with one control message (a refusal) and close it."""
    session = _Closing()
    session.take_over(transport, link)
    session.send(control(message))
    session.close()
