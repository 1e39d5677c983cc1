"""A replica's end of a vhost's replication: it keeps a session open to the owner's cluster
port, loads a snapshot when it must, applies the owner's records to its own copy of the
vhost store (fsync'ed, group-committed by the store) and acks each by offset.

Fencing: a record from an epoch older than the one this node knows from Raft
comes from a deposed owner; it is refused, the owner is told the newer epoch, and the
session ends, so an owner that was paused or cut off can confirm nothing afterwards.

Both ends send heartbeats; a session whose owner went silent for the lag timeout ends and
is opened again.  The session stops reading while the store's writer is far behind, so a
slow disk here bounds what the owner's records can pin in this node's memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cluster import shards, wire
from cluster.replication import HEARTBEAT_INTERVAL
from storage.records import RecordError
from storage.store import MessageStore, StoreError

log = logging.getLogger("warren.replication.follower")

# connect(address, facts) -> (transport, the session's link: keys, bytes read past the
# handshake)
Connect = Callable[[str, dict[str, Any]], Awaitable[tuple[asyncio.Transport, wire.Link]]]

RETRY_MIN = 0.05
RETRY_MAX = 1.0
# Record bytes applied but not yet committed here above which the session stops reading.
APPLY_BACKLOG_BYTES = 32 << 20


class Follower:
    """Follows one vhost's owner for as long as this node is a replica of it."""

    def __init__(self, vhost: str, node: str, store: MessageStore, connect: Connect,
                 timeout: float = 3.0) -> None:
        self.vhost = vhost
        self.timeout = timeout
        self.node = node
        self.store = store
        self._connect = connect
        self.owner: str | None = None
        self.owner_address: str | None = None
        self.epoch = 0
        self.connected = False
        self.state = "idle"  # idle | connecting | snapshot | streaming
        self._session: FollowerSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._fresh = False
        # the newest offset the owner said was confirmed (a promotion compares it)
        self.hw = 0
        store.become_replica()
        # kept so that, once promoted, this node can catch the other replicas up by stream
        # from where they are
        store.keep_changelog()

    def follow(self, owner: str | None, address: str | None, epoch: int) -> None:
        """Follow ``owner`` at ``epoch`` (called again whenever placement changes)."""
        changed = (owner, address) != (self.owner, self.owner_address) or epoch != self.epoch
        self.owner, self.owner_address, self.epoch = owner, address, epoch
        if changed:
            self._fresh = True  # a new owner or epoch: retry from the shortest delay
        session = self._session
        if changed and session is not None:
            # a new owner, or this one's history may have moved on: apply nothing more
            # from this session, and tell a deposed owner why it hears no more acks
            session.stopped = True
            if epoch > session.epoch:
                session.send(wire.control({"t": "fenced", "epoch": epoch}))
            session.close()
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        self._wake.set()

    def halt(self) -> asyncio.Task[None] | None:
        """Stop following at once: from this call on, no record is applied (a promotion
        numbers its own records right after).  Returns the task to await, if any."""
        task, self._task = self._task, None
        if self._session is not None:
            self._session.stopped = True
            self._session.close()
        if task is not None:
            task.cancel()
        return task

    async def stop(self) -> None:
        task = self.halt()
        if task is not None:
            try:
                await task
            except BaseException:  # noqa: B036 - cancelled on purpose
                pass

    async def _run(self) -> None:
        delay = RETRY_MIN
        while True:
            if self._fresh:
                self._fresh, delay = False, RETRY_MIN
            if not self.owner_address or self.owner == self.node:
                self._wake.clear()
                await self._wake.wait()
                continue
            self.state = "connecting"
            # what an earlier session applied must be committed before we say where we are
            try:
                await self.store.sync_point()
            except StoreError as e:
                log.error("%s: the store cannot follow: %s", shards.label(self.vhost), e)
                await self._sleep(RETRY_MAX)
                continue
            facts = {"kind": "replicate", "vhost": self.vhost, "node": self.node,
                     "epoch": self.epoch, "position": list(self.store.position)}
            try:
                transport, link = await self._connect(self.owner_address, facts)
            except (OSError, ConnectionError, asyncio.TimeoutError) as e:
                log.debug("%s: cannot reach owner %s: %s", shards.label(self.vhost), self.owner, e)
                self.state = "idle"
                await self._sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            session = FollowerSession(self)
            self._session = session
            session.take_over(transport, link)
            self.connected = True
            beat = asyncio.ensure_future(session.beat())
            try:
                await session.closed
            finally:
                beat.cancel()
            self.connected = False
            self._session = None
            self.state = "idle"
            # refused by a live node (it has not applied its promotion yet) or a session
            # that got going: try again soon; anything else backs off
            delay = RETRY_MIN if session.streamed or session.refused \
                else min(delay * 2, RETRY_MAX)
            await self._sleep(delay)

    async def _sleep(self, delay: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), delay)
        except asyncio.TimeoutError:
            pass


class FollowerSession(wire.FramedProtocol):
    def __init__(self, follower: Follower) -> None:
        super().__init__()
        self.follower = follower
        self.store = follower.store
        self.epoch = follower.epoch
        self.stopped = False
        self.streamed = False
        self.refused = False
        self._mode: str | None = None
        self._acking: asyncio.Future[None] | None = None
        self._heard = time.monotonic()
        self._held = False

    async def beat(self) -> None:
        """Heartbeats both ways: say we are here; end the session if the owner is silent."""
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            if time.monotonic() - self._heard > self.follower.timeout:
                self.fail(f"no word from owner {self.follower.owner} for "
                          f"{time.monotonic() - self._heard:.1f} s")
                return
            self.send(wire.control({"t": "hb"}))

    def frame_received(self, kind: int, body: bytes) -> None:
        self._heard = time.monotonic()
        if self.stopped:
            return
        if kind == wire.RECORD:
            offset, epoch, payload = self.decode_record(body)
            self._record(offset, epoch, payload)
        elif kind == wire.CONTROL:
            self._control(self.decode_control(body))
        else:
            raise wire.WireError(f"unexpected frame kind {kind}")

    def _record(self, offset: int, epoch: int, payload: bytes) -> None:
        known = self.follower.epoch
        if self.epoch < known:
            # a deposed owner still writing: refuse, and tell it why
            self.send(wire.control({"t": "fenced", "epoch": known}))
            self.fail(f"records from a deposed owner (epoch {self.epoch}; placement says "
                      f"{known})")
            return
        if epoch > self.epoch or self._mode != "streaming":
            self.fail(f"record of epoch {epoch} in a session of epoch {self.epoch}")
            return
        expected = self.store.last_offset + 1
        if offset != expected:
            self.fail(f"record {offset} where {expected} was expected")
            return
        try:
            fut = self.store.apply_record(offset, epoch, payload)
        except (RecordError, StoreError) as e:
            self.fail(f"cannot apply record {offset}: {e}")
            return
        self.streamed = True
        self._ack_after(fut, offset)
        if not self._held and self.store.pending_bytes > APPLY_BACKLOG_BYTES \
                and self.transport is not None:
            # our disk is behind the owner's stream: stop reading until it caught up
            self._held = True
            self.transport.pause_reading()
            fut.add_done_callback(self._resume)

    def _resume(self, _: object) -> None:
        self._held = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _ack_after(self, fut: asyncio.Future[None], offset: int) -> None:
        # one callback per store commit, acking the newest offset it holds
        self._last = offset
        if fut is self._acking:
            return
        self._acking = fut

        def done(f: asyncio.Future[None], epoch: int = self.epoch) -> None:
            if f.cancelled() or f.exception() is not None or self.stopped:
                self.fail("store commit failed")
                return
            self.send(wire.ack(epoch, self.store.position[1]))
        fut.add_done_callback(done)

    def _control(self, message: dict[str, Any]) -> None:
        t = message.get("t")
        store = self.store
        if t == "hello":
            epoch = int(message.get("epoch", 0))
            if epoch < self.follower.epoch:
                self.send(wire.control({"t": "fenced", "epoch": self.follower.epoch}))
                self.fail(f"owner writes epoch {epoch}, placement says {self.follower.epoch}")
                return
            self.epoch = epoch
            self._note_hw(message.get("hw"))
            if message.get("mode") == "stream":
                self._mode = "streaming"
                self.follower.state = "streaming"
                store.adopt_epochs(message.get("epochs") or [])
                self._ack_after(store.sync_point(), store.last_offset)
            else:
                self._mode = "snapshot"
                self.follower.state = "snapshot"
                log.info("%s: loading a snapshot from %s", shards.label(self.follower.vhost),
                         self.follower.owner)
        elif t == "snap_begin" and self._mode == "snapshot":
            store.begin_snapshot()
        elif t == "snap_rows" and self._mode == "snapshot":
            rows = message.get("rows")
            if not isinstance(rows, list) or not all(
                    isinstance(r, list) and len(r) == 2 and isinstance(r[0], bytes)
                    and (r[1] is None or isinstance(r[1], bytes)) for r in rows):
                raise wire.WireError("malformed snapshot rows")
            store.load_snapshot([(k, v) for k, v in rows])
        elif t == "snap_end" and self._mode == "snapshot":
            position = message.get("position") or [0, 0]
            fut = store.end_snapshot((int(position[0]), int(position[1])),
                                     message.get("epochs") or [])
            self._note_hw(message.get("hw"))
            self._mode = "streaming"
            self.follower.state = "streaming"
            self.streamed = True
            self._ack_after(fut, int(position[1]))
            log.info("%s: snapshot loaded at offset %s", shards.label(self.follower.vhost),
                     position[1])
        elif t == "hw":
            self._note_hw(message.get("offset"))
        elif t == "hb":
            pass
        elif t == "refuse":
            self.refused = True
            self.fail(f"owner refused: {message.get('reason')}")
        else:
            raise wire.WireError(f"unexpected control message {t!r}")

    def _note_hw(self, offset: object) -> None:
        if isinstance(offset, int) and offset > self.follower.hw:
            self.follower.hw = offset
