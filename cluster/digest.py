"""Comparing the copies of a vhost: a digest of each copy's store at one offset.

The owner holds the vhost's writes until every in-sync replica has acked its newest offset
O (node/verify.py), then asks each replica, in a session of kind ``digest`` on its cluster
port, for the digest of its copy.  The replica opens a read transaction at once and says
at which position (epoch, offset) it did (``opened``): from then on the owner may let the
writes go on, since the transaction reads a snapshot; the digest follows (``digest``) when
the replica's thread has hashed it.  Copies agree when they were read at the same position
and their digests are equal.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cluster import wire
from storage.store import MessageStore, StoreError


class DigestServer(wire.FramedProtocol):
    """A replica's answer to one digest request: ``opened``, then ``digest`` (or
    ``error``)."""

    def __init__(self, store: MessageStore | None, why_not: str = "") -> None:
        super().__init__()
        self.store = store
        self.why_not = why_not

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.ensure_future(self._answer())

    async def _answer(self) -> None:
        if self.store is None:
            self.send(wire.control({"t": "error", "reason": self.why_not}))
            self.close()
            return
        try:
            opened, done = self.store.digest()
            position = await opened
            self.send(wire.control({"t": "opened", "position": list(position)}))
            self.send(wire.control({"t": "digest", "digest": await done}))
        except StoreError as e:
            self.send(wire.control({"t": "error", "reason": str(e)}))
        self.close()

    def frame_received(self, kind: int, body: bytes) -> None:
        raise wire.WireError("a digest session takes no frames")


class DigestClient(wire.FramedProtocol):
    """The owner's end: ``opened`` resolves with the replica's read position, ``done``
    with its digest; both fail with the replica's reason, or when the session ends."""

    def __init__(self) -> None:
        super().__init__()
        loop = asyncio.get_event_loop()
        self.opened: asyncio.Future[tuple[int, int]] = loop.create_future()
        self.done: asyncio.Future[str] = loop.create_future()
        # the session may end before anyone awaits the digest: no "never retrieved"
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())

    def frame_received(self, kind: int, body: bytes) -> None:
        message: dict[str, Any] = self.decode_control(body) if kind == wire.CONTROL else {}
        t = message.get("t")
        if t == "opened" and not self.opened.done():
            position = message.get("position") or [0, 0]
            self.opened.set_result((int(position[0]), int(position[1])))
        elif t == "digest" and not self.done.done():
            self.done.set_result(str(message.get("digest")))
        elif t in ("error", "refuse"):
            self._end(ConnectionError(str(message.get("reason"))))
        else:
            raise wire.WireError(f"unexpected digest message {t!r}")

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._end(ConnectionError("digest session closed"))

    def _end(self, error: Exception) -> None:
        for fut in (self.opened, self.done):
            if not fut.done():
                fut.set_exception(error)
        self.opened.add_done_callback(lambda f: f.cancelled() or f.exception())
