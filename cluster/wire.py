"""Frames of the sessions between nodes on the cluster port (after its HMAC handshake).

A frame is ``length (4 bytes, big-endian) + kind (1 byte) + body``.  Kind RECORD carries a
change-log record as ``offset (8) + epoch (8) + payload``, so the store's msgpack bytes go
out untouched; every other kind's body is one msgpack map.  Nothing is ever unpickled, and
a peer's frame is bounded (`MAX_FRAME`), so a broken or hostile peer costs a closed
session, not memory.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

import msgpack

log = logging.getLogger("warren.cluster.wire")

CONTROL = 0  # msgpack map
RECORD = 1  # offset, epoch, record payload
ACK = 2  # epoch, offset: everything up to offset is durable here

# A record is one store transaction: bounded by the store's batch limits (16 MiB of
# records plus overhead); a snapshot chunk is ~4 MiB.
MAX_FRAME = 64 << 20

_HEAD = struct.Struct(">IB")
_RECORD_HEAD = struct.Struct(">IBqq")
_ACK = struct.Struct(">IBqq")


class WireError(Exception):
    """The peer sent something that is not a frame of this protocol."""


def control(message: dict[str, Any]) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return _HEAD.pack(len(body) + 1, CONTROL) + body


def record(offset: int, epoch: int, payload: bytes) -> bytes:
    return _RECORD_HEAD.pack(len(payload) + 17, RECORD, offset, epoch) + payload


def ack(epoch: int, offset: int) -> bytes:
    return _ACK.pack(17, ACK, epoch, offset)


class FramedProtocol(asyncio.Protocol):
    """Splits the byte stream into frames and hands each to `frame_received`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._paused_writing = False
        self._drained: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_event_loop().create_future()

    def take_over(self, transport: asyncio.Transport, early: bytes) -> None:
        """Become the protocol of a transport the cluster port's handshake opened (it
        stopped reading there, so that no byte lands in the handshake's protocol)."""
        transport.set_protocol(self)
        self.connection_made(transport)
        if early:
            self.data_received(early)
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
        try:
            while len(buf) - pos >= 5:
                size, kind = _HEAD.unpack_from(buf, pos)
                if size > MAX_FRAME or size < 1:
                    raise WireError(f"frame of {size} bytes")
                if len(buf) - pos < 4 + size:
                    break
                body = bytes(buf[pos + 5: pos + 4 + size])
                pos += 4 + size
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
    def decode_ack(body: bytes) -> tuple[int, int]:
        if len(body) != 16:
            raise WireError("bad ack frame")
        epoch, offset = struct.unpack_from(">qq", body)
        return epoch, offset

    def send(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

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
