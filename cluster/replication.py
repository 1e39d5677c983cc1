"""The owner's end of a vhost's replication (DESIGN §4): it streams the vhost store's
records to each replica, counts their acks, keeps the in-sync set honest through Raft, and
releases publisher confirms only once every in-sync replica has the record.

Rules, in the words of the design brief, and where each is kept:

* confirm only after the owner's own commit and every in-sync replica's ack of its own
  commit: `_release` resolves a flush future only up to ``min(local, acks of required)``;
* a replica leaves the in-sync set only by a committed Raft change, before anything it lacks
  is confirmed: a lagging or disconnected replica stays *required* until the change that
  drops it is committed (`update_in_sync`);
* a replica joins once caught up: it is required from the moment the owner proposes it,
  so nothing is confirmed without it while the proposal is in flight;
* ``min_in_sync`` copies (the owner's included) or the publish is nacked.

Everything here runs on the event loop; the store's writer thread reaches it through the
store's `on_record` and `confirm_gate` hooks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from cluster import wire
from storage.changelog import ChangeLog
from storage.store import MessageStore, StoreError

log = logging.getLogger("warren.replication")

# Records a session may have written but not yet had acked before it waits (bytes in the
# socket buffers are bounded by the transport's own high-water mark too).
LIVE_WINDOW_RECORDS = 50_000

ProposeInSync = Callable[[str, bool, int], Awaitable[bool]]


class NotEnoughReplicas(StoreError):
    """Fewer copies are in sync than --min-in-sync asks: the publish is nacked."""


def continues_history(position: tuple[int, int], epochs: list[list[int]],
                      last_offset: int) -> bool:
    """Whether a copy at ``position`` (epoch of its last record, offset) holds a prefix of
    the history that ``epochs`` ([epoch, first offset], oldest first) and ``last_offset``
    describe, so that it can go on from there by stream; otherwise it needs a snapshot
    (a returning old owner that wrote past the point where the new owner took over)."""
    epoch, offset = position
    if offset < 0 or offset > last_offset:
        return False
    if offset == 0:
        return True
    for e, start in epochs:
        if e > epoch:
            return offset < start
    return True


class ReplicationSource:
    """One vhost on its owner: replica sessions, acks, in-sync set, confirm release."""

    def __init__(self, vhost: str, store: MessageStore, epoch: int, in_sync: list[str],
                 *, min_in_sync: int, lag_timeout: float, propose: ProposeInSync,
                 changelog_bytes: int = 64 << 20) -> None:
        self.vhost = vhost
        self.store = store
        self.epoch = epoch
        self.min_in_sync = min_in_sync
        self.lag_timeout = lag_timeout
        self._propose = propose
        self.in_sync: set[str] = set(in_sync)  # as committed in Raft
        self.joining: set[str] = set()
        self.leaving: set[str] = set()
        self.sessions: dict[str, SourceSession] = {}
        self.acked: dict[str, int] = {}
        self.local = store.position[1]  # the newest offset committed here
        self._pending: deque[tuple[int, asyncio.Future[None] | None, float]] = deque()
        self._closed = False
        self._started = time.monotonic()
        self._seen: dict[str, float] = {}
        if store.changelog is None:
            store.changelog = ChangeLog(changelog_bytes)
            store.changelog.expect(store.last_offset + 1)
        store.on_record = self._on_record
        store.confirm_gate = self._on_committed
        self._watch = asyncio.ensure_future(self._watch_lag())

    # ------------------------------------------------------------------ hooks of the store

    def _on_record(self, offset: int, epoch: int, payload: bytes) -> None:
        frame = wire.record(offset, epoch, payload)
        for session in self.sessions.values():
            if session.live:
                session.send(frame)
                session.sent = offset

    def _on_committed(self, offset: int, fut: asyncio.Future[None] | None) -> None:
        self.local = offset
        if fut is not None:
            self._pending.append((offset, fut, time.monotonic()))
        self._release()

    # ------------------------------------------------------------------ acks and confirms

    @property
    def required(self) -> set[str]:
        return self.in_sync | self.joining

    def on_ack(self, node: str, offset: int) -> None:
        if offset > self.acked.get(node, -1):
            self.acked[node] = offset
        if (node not in self.in_sync and node not in self.joining
                and offset >= self.local and not self._closed):
            # caught up: required from now on, then made official through Raft
            self.joining.add(node)
            asyncio.ensure_future(self._change(node, True))
        self._release()

    def _release(self) -> None:
        pending = self._pending
        if not pending:
            return
        limit = self.local
        for node in self.required:
            acked = self.acked.get(node, -1)
            if acked < limit:
                limit = acked
        short = 1 + len(self.in_sync - self.leaving) < self.min_in_sync
        while pending and pending[0][0] <= limit:
            _, fut, _ = pending.popleft()
            if fut is None or fut.done():
                continue
            if short:
                fut.set_exception(NotEnoughReplicas(
                    f"vhost '{self.vhost}': fewer than {self.min_in_sync} copies in sync"))
            else:
                fut.set_result(None)

    def update_in_sync(self, in_sync: list[str]) -> None:
        """The committed in-sync set changed (a Raft event)."""
        self.in_sync = set(in_sync)
        self.joining -= self.in_sync
        self.leaving &= self.in_sync
        self._release()

    async def _change(self, node: str, join: bool) -> None:
        ok = False
        try:
            ok = await self._propose(node, join, self.epoch)
        except Exception as e:  # no quorum, deposed...: the watch loop tries again
            log.warning("vhost '%s': could not %s in-sync replica %s: %s", self.vhost,
                        "add" if join else "drop", node, e)
        if not ok:
            (self.joining if join else self.leaving).discard(node)
        if join and ok:
            log.info("vhost '%s': replica %s is in sync", self.vhost, node)

    def _drop(self, node: str, why: str) -> None:
        self.joining.discard(node)
        if node in self.in_sync and node not in self.leaving and not self._closed:
            log.warning("vhost '%s': dropping replica %s from the in-sync set: %s",
                        self.vhost, node, why)
            self.leaving.add(node)
            asyncio.ensure_future(self._change(node, False))
        self._release()

    async def _watch_lag(self) -> None:
        while not self._closed:
            await asyncio.sleep(min(0.2, self.lag_timeout / 4))
            if self._pending:
                offset, _, since = self._pending[0]
                if time.monotonic() - since > self.lag_timeout:
                    for node in list(self.required):
                        if self.acked.get(node, -1) < offset:
                            self._drop(node, f"no ack within {self.lag_timeout:g} s")
            now = time.monotonic()
            for node in list(self.in_sync):
                if node not in self.sessions and \
                        now - self._seen.get(node, self._started) > self.lag_timeout:
                    self._drop(node, "not connected")

    # ------------------------------------------------------------------ sessions

    def attach(self, node: str, session: SourceSession) -> None:
        old = self.sessions.get(node)
        if old is not None and old is not session:
            old.close()
        self.sessions[node] = session
        self._seen[node] = time.monotonic()

    def detach(self, node: str, session: SourceSession) -> None:
        if self.sessions.get(node) is session:
            del self.sessions[node]
            self._seen[node] = time.monotonic()
            self._drop(node, "replication session closed")

    def lag(self) -> dict[str, dict[str, int]]:
        out = {}
        changelog = self.store.changelog
        last = self.store.last_offset
        for node in set(self.sessions) | self.in_sync | set(self.acked):
            acked = self.acked.get(node, -1)
            out[node] = {"records": max(last - acked, 0) if acked >= 0 else last,
                         "bytes": changelog.lag_bytes(acked) if changelog and acked >= 0
                         else 0}
        return out

    async def drained_to(self, node: str, timeout: float) -> None:
        """Wait until ``node`` acked everything this store has numbered."""
        deadline = time.monotonic() + timeout
        while self.acked.get(node, -1) < self.store.last_offset:
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica {node} did not catch up within {timeout:g} s")
            await asyncio.sleep(0.002)

    def close(self, why: str) -> None:
        """This node no longer owns the vhost: nothing pending may be confirmed any more."""
        if self._closed:
            return
        self._closed = True
        self._watch.cancel()
        if self.store.on_record == self._on_record:
            self.store.on_record = None
        if self.store.confirm_gate == self._on_committed:
            self.store.confirm_gate = None
        while self._pending:
            _, fut, _ = self._pending.popleft()
            if fut is not None and not fut.done():
                fut.set_exception(StoreError(f"vhost '{self.vhost}': {why}"))
        for session in list(self.sessions.values()):
            session.close()
        self.sessions.clear()


class SourceSession(wire.FramedProtocol):
    """The owner's side of one replica's session: catch-up (by stream or snapshot), then
    live records; acks flow back."""

    def __init__(self, source: ReplicationSource, node: str, position: tuple[int, int],
                 on_fenced: Callable[[int], None]) -> None:
        super().__init__()
        self.source = source
        self.node = node
        self.position = position
        self.on_fenced = on_fenced
        self.live = False
        self.sent = -1
        self._task: asyncio.Future[None] | None = None

    def start(self, transport: asyncio.Transport, link: wire.Link) -> None:
        self.source.attach(self.node, self)
        self.take_over(transport, link)
        self._task = asyncio.ensure_future(self._catch_up())

    async def _catch_up(self) -> None:
        source, store = self.source, self.source.store
        try:
            assert store.changelog is not None
            if continues_history(self.position, store.epochs, store.last_offset) and (
                    self.position[1] == store.last_offset
                    or store.changelog.since(self.position[1]) is not None):
                self.send(wire.control({"t": "hello", "mode": "stream",
                                        "epoch": source.epoch, "epochs": store.epochs}))
                self.sent = self.position[1]
            else:
                self.send(wire.control({"t": "hello", "mode": "snapshot",
                                        "epoch": source.epoch}))
                position: tuple[int, int] = (0, 0)
                async for item in store.snapshot():
                    if item[0] == "begin":
                        position = tuple(item[1])  # type: ignore[assignment]
                        # the records after the snapshot must still be here at its end
                        store.changelog.pin(self, position[1])
                        self.send(wire.control({"t": "snap_begin"}))
                        epochs = item[2]
                    else:
                        self.send(wire.control({"t": "snap_rows", "rows": item[1]}))
                    await self.drain()
                    if self.transport is None or self.transport.is_closing():
                        return
                self.send(wire.control({"t": "snap_end", "position": list(position),
                                        "epochs": epochs}))
                self.sent = position[1]
            while True:  # the records since, in batches, until none is left: then live
                backlog = store.changelog.since(self.sent)
                if backlog is None:
                    self.fail("fell out of the change log during catch-up; will resnapshot")
                    return
                if not backlog:
                    break
                for rec in backlog[:LIVE_WINDOW_RECORDS]:
                    self.send(wire.record(*rec))
                    self.sent = rec.offset
                store.changelog.pin(self, self.sent)
                await self.drain()
                if self.transport is None or self.transport.is_closing():
                    return
            self.live = True
            store.changelog.unpin(self)
        except (ConnectionError, StoreError) as e:
            self.fail(f"catch-up of {self.node} failed: {e}")
        except Exception:
            log.exception("vhost '%s': catch-up of %s failed", self.source.vhost, self.node)
            self.fail("catch-up failed")

    def frame_received(self, kind: int, body: bytes) -> None:
        if kind == wire.ACK:
            epoch, offset = self.decode_ack(body)
            if epoch == self.source.epoch:
                self.source.on_ack(self.node, offset)
        elif kind == wire.CONTROL:
            message = self.decode_control(body)
            if message.get("t") == "fenced":
                epoch = int(message.get("epoch", 0))
                if epoch <= self.source.epoch:
                    # only a newer epoch deposes this owner; the replica is confused
                    self.fail(f"fenced with epoch {epoch}, not newer than ours "
                              f"({self.source.epoch})")
                    return
                log.warning("vhost '%s': replica %s knows epoch %d (we write %d): stepping "
                            "down", self.source.vhost, self.node, epoch, self.source.epoch)
                self.on_fenced(epoch)
        else:
            raise wire.WireError(f"unexpected frame kind {kind}")

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._task is not None:
            self._task.cancel()
        if self.source.store.changelog is not None:
            self.source.store.changelog.unpin(self)
        self.source.detach(self.node, self)
