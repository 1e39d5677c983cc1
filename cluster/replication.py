"""The owner's end of a vhost's replication: it streams the vhost store's
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

* histories are compared by epoch, as Kafka does since KIP-101/KIP-279
  (`continues_history`): a copy goes on by stream only from a position inside the
  owner's history, else it is rebuilt by snapshot;
* a copy that must be rebuilt leaves the in-sync set by a committed Raft change before its
  store is touched (`SourceSession._catch_up`), and rejoins on its first ack after;
* acks are checked: one past what the session sent ends the session;
* the confirmed high-water mark travels to the replicas (``hw``), so a promotion can tell
  a complete copy from one that lacks confirmed records;
* memory is bounded: a session whose socket holds more than `SEND_WINDOW_BYTES` stops
  taking live records and is fed from the change log at its peer's pace; a peer silent for
  the lag timeout (stopped, cut off) ends its session; the change log is capped per node.

Everything here runs on the event loop; the store's writer thread reaches it through the
one hook it is attached as (`record`, `committed`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from cluster import shards, wire
from storage.store import MessageStore, StoreError

log = logging.getLogger("warren.replication.source")

# Records a catch-up writes before it waits for the peer to read them.
CATCH_UP_BATCH_BYTES = 4 << 20
CATCH_UP_BATCH_RECORDS = 50_000
# Bytes a live session may have waiting in its socket buffers before it is fed from the
# change log instead (a slow or stopped replica must not grow the owner's memory).
SEND_WINDOW_BYTES = 8 << 20
# How often both ends of a session say they are alive when nothing else is sent.
HEARTBEAT_INTERVAL = 0.5
# A drop that could not commit (no Raft leader: an election takes 40-800 ms) is asked again
# after this long, doubling up to DROP_RETRY_MAX.
DROP_RETRY_FIRST = 0.05
DROP_RETRY_MAX = 1.0

ProposeInSync = Callable[[str, bool, int, int], Awaitable[bool]]


class NotEnoughReplicas(StoreError):
    """Fewer copies are in sync than --min-in-sync asks: the publish is nacked."""


def epoch_end(epochs: list[list[int]], epoch: int, last_offset: int) -> int | None:
    """The last offset ``epoch`` wrote in the history ``epochs`` describes ([epoch, first
    offset], oldest first, ending at ``last_offset``); None if it is not in that history."""
    for i, (e, _start) in enumerate(epochs):
        if e == epoch:
            return epochs[i + 1][1] - 1 if i + 1 < len(epochs) else last_offset
    return None


def continues_history(position: tuple[int, int], epochs: list[list[int]],
                      last_offset: int) -> bool:
    """Whether a copy at ``position`` (epoch of its last record, offset) holds a prefix of
    the owner's history, so that it can go on from there by stream.  As in Kafka (KIP-279):
    its epoch must be one of the owner's and its offset not past that epoch's end there;
    anything else diverged (an owner that wrote past the point where another took over,
    or records streamed before a crash that the owner never committed) and is rebuilt by
    snapshot."""
    epoch, offset = position
    if offset < 0 or offset > last_offset:
        return False
    if offset == 0:
        return True
    for e, start in epochs:
        if e == epoch:
            end = epoch_end(epochs, epoch, last_offset)
            return end is not None and start <= offset <= end
    return False


class ReplicationSource:
    """One vhost on its owner: replica sessions, acks, in-sync set, confirm release.  It is
    the store's replication hook."""

    def __init__(self, vhost: str, store: MessageStore, epoch: int, in_sync: list[str],
                 *, min_in_sync: int, lag_timeout: float, propose: ProposeInSync,
                 may_exclude: Callable[[], bool] = lambda: True,
                 changelog_bytes: int = 64 << 20) -> None:
        self.vhost = vhost
        self.store = store
        self.epoch = epoch
        self.min_in_sync = min_in_sync
        self.lag_timeout = lag_timeout
        self._propose = propose
        self.may_exclude = may_exclude  # see `required`
        self.in_sync: set[str] = set(in_sync)  # as committed in Raft
        self.joining: set[str] = set()
        self.leaving: set[str] = set()
        self.sessions: dict[str, SourceSession] = {}
        self.acked: dict[str, int] = {}
        self.local = store.position[1]  # the newest offset committed here
        self.hw = 0  # the newest offset confirmed: every in-sync copy holds it
        self._hw_sent = 0
        self._hw_due = False
        self._pending: deque[tuple[int, asyncio.Future[None] | None, float]] = deque()
        # True while this owner's lease has lapsed (no Raft majority heard from lately):
        # nothing is confirmed until it is back, or the node is deposed
        self.lease_held = False
        self._closed = False
        self._started = time.monotonic()
        self._seen: dict[str, float] = {}
        self._drop_retry: dict[str, float] = {}  # node -> wait before asking again
        # called with a replica's name when its catch-up made headway (a live move follows)
        self.on_progress: Callable[[str], None] | None = None
        self.changelog = store.keep_changelog(changelog_bytes)
        store.attach(self)
        self._watch = asyncio.ensure_future(self._watch_lag())

    # ------------------------------------------------------------------ the store's hook

    def record(self, offset: int, epoch: int, payload: bytes) -> None:
        frame = wire.record(offset, epoch, payload)
        for session in self.sessions.values():
            session.push(frame, offset)

    def committed(self, offset: int, fut: asyncio.Future[None] | None) -> None:
        if self._closed:
            if fut is not None and not fut.done():
                fut.set_exception(StoreError(f"vhost '{self.vhost}': this node no longer "
                                             "owns it"))
            return
        if offset > self.local:
            self.local = offset
        if fut is not None:
            self._pending.append((offset, fut, time.monotonic()))
        self._release()

    # ------------------------------------------------------------------ acks and confirms

    @property
    def required(self) -> set[str]:
        """The replicas whose acks a confirm waits for.  One copy on its way out of the
        in-sync set (its session ended, or it lags) stops counting at once, before Raft has
        committed the drop, as long as another in-sync copy still counts: a failover
        promotes only after hearing from two in-sync copies when there are two
        (`cluster.placement.promotion_choice`), and at most one was left out of any
        confirm, so one of the two holds every confirmed message.  (Waiting for the drop
        to commit paused every confirm of the unit for a Raft round trip; a quorum queue
        does not pause for a follower's death either.)  Only while `may_exclude` says so:
        the owner has heard a Raft majority lately, so no failover can have read the copies'
        positions and chosen one without it meanwhile (an owner resumed after a long pause
        reads a departing copy's end before it learns it was deposed)."""
        required = self.in_sync | self.joining
        if len(self.leaving) == 1 and self.in_sync - self.leaving and self.may_exclude():
            required -= self.leaving
        return required

    def on_ack(self, node: str, offset: int) -> None:
        if offset > self.acked.get(node, -1):
            self.acked[node] = offset
        if (node not in self.in_sync and node not in self.joining
                and offset >= self.local and not self._closed):
            # caught up: required from now on, then made official through Raft
            self.joining.add(node)
            asyncio.ensure_future(self._change(node, True))
        self._release()

    def hold_for_lease(self, held: bool) -> None:
        self.lease_held = held
        if not held:
            self._release()

    def _release(self) -> None:
        if self.lease_held:
            return
        limit = self.local
        for node in self.required:
            acked = self.acked.get(node, -1)
            if acked < limit:
                limit = acked
        short = 1 + len(self.in_sync - self.leaving) < self.min_in_sync
        if not short and limit > self.hw:
            self.hw = limit
            if not self._hw_due:
                self._hw_due = True
                asyncio.get_running_loop().call_soon(self._send_hw)
        pending = self._pending
        while pending and pending[0][0] <= limit:
            _, fut, _ = pending.popleft()
            if fut is None or fut.done():
                continue
            if short:
                fut.set_exception(NotEnoughReplicas(
                    f"vhost '{self.vhost}': fewer than {self.min_in_sync} copies in sync"))
            else:
                fut.set_result(None)

    def _send_hw(self) -> None:
        """Tell the replicas how far confirms went (once per loop turn at most)."""
        self._hw_due = False
        if self.hw == self._hw_sent or self._closed:
            return
        self._hw_sent = self.hw
        frame = wire.control({"t": "hw", "offset": self.hw})
        for session in self.sessions.values():
            if session.live:
                session.send(frame)

    def update_in_sync(self, in_sync: list[str]) -> None:
        """The committed in-sync set changed (a Raft event)."""
        self.in_sync = set(in_sync)
        self.joining -= self.in_sync
        self.leaving &= self.in_sync
        self._release()

    async def _change(self, node: str, join: bool) -> bool:
        ok = False
        uncommitted = False
        try:
            ok = await self._propose(node, join, self.epoch, self.hw)
        except Exception as e:  # no quorum, no leader: see below
            uncommitted = True
            log.warning("%s: could not %s in-sync replica %s: %s", shards.label(self.vhost),
                        "add" if join else "drop", node, e)
        if ok:
            self._drop_retry.pop(node, None)
        elif join:
            self.joining.discard(node)
        elif uncommitted and not self._closed:
            # The Raft leader died too (often on the very node this replica ran on), or
            # the majority is out of reach for now: the copy stays on its way out (see
            # `required`) and the drop is asked again as soon as a new leader may be
            # there, not after the lag timeout.
            delay = self._drop_retry.get(node, DROP_RETRY_FIRST)
            self._drop_retry[node] = min(delay * 2, DROP_RETRY_MAX)
            asyncio.get_running_loop().call_later(delay, self._drop_again, node)
        else:  # refused: this owner was deposed
            self.leaving.discard(node)
        if join and ok:
            log.info("%s: replica %s is in sync", shards.label(self.vhost), node)
        return ok

    def _drop_again(self, node: str) -> None:
        if not self._closed and node in self.leaving and node in self.in_sync:
            asyncio.ensure_future(self._change(node, False))

    def _drop(self, node: str, why: str) -> None:
        self.joining.discard(node)
        if node in self.in_sync and node not in self.leaving and not self._closed:
            log.warning("%s: dropping replica %s from the in-sync set: %s",
                        shards.label(self.vhost), node, why)
            self.leaving.add(node)
            asyncio.ensure_future(self._change(node, False))
        self._release()

    async def out_of_sync(self, node: str, why: str) -> bool:
        """Take ``node`` out of the in-sync set and wait until Raft committed it (a copy
        about to be rebuilt by snapshot must never count as complete meanwhile)."""
        self.joining.discard(node)
        if node not in self.in_sync:
            return True
        log.warning("%s: replica %s leaves the in-sync set: %s", shards.label(self.vhost), node,
                    why)
        self.leaving.add(node)
        ok = await self._change(node, False)
        if ok:
            self.in_sync.discard(node)
            self.leaving.discard(node)
        return ok

    async def _watch_lag(self) -> None:
        while not self._closed:
            await asyncio.sleep(min(0.2, self.lag_timeout / 4))
            now = time.monotonic()
            if self._pending:
                offset, _, since = self._pending[0]
                if now - since > self.lag_timeout:
                    for node in list(self.required):
                        if self.acked.get(node, -1) < offset:
                            self._drop(node, f"no ack within {self.lag_timeout:g} s")
            for node in list(self.in_sync):
                if node not in self.sessions and \
                        now - self._seen.get(node, self._started) > self.lag_timeout:
                    self._drop(node, "not connected")
            for session in list(self.sessions.values()):
                session.tick(now)

    # ------------------------------------------------------------------ sessions

    def attach(self, node: str, session: SourceSession) -> None:
        old = self.sessions.get(node)
        if old is not None and old is not session:
            old.close()
        self.sessions[node] = session
        # what an earlier session acked says nothing about this one's copy
        self.acked.pop(node, None)
        self._seen[node] = time.monotonic()

    def detach(self, node: str, session: SourceSession) -> None:
        if self.sessions.get(node) is session:
            del self.sessions[node]
            self._seen[node] = time.monotonic()
            self._drop(node, "replication session closed")

    def lag(self) -> dict[str, dict[str, int]]:
        """Per replica: records it lacks, and their bytes; the bytes a copy being rebuilt by
        snapshot lacks are what is left of the snapshot (estimated) and the records after."""
        out = {}
        changelog = self.changelog
        last = self.store.last_offset
        for node in set(self.sessions) | self.in_sync | set(self.acked):
            acked = self.acked.get(node, -1)
            session = self.sessions.get(node)
            if acked < 0 and session is not None and session.snapshot_position is not None:
                after = session.snapshot_position
                left = 0 if session.snapshot_done else max(
                    (session.snapshot_bytes or 0) - session.snapshot_sent, 0)
                # the copy holds none of the records before the snapshot is in
                out[node] = {"records": max(last - after, 0) if session.snapshot_done
                             else last, "bytes": left + changelog.lag_bytes(after)}
                continue
            out[node] = {"records": max(last - acked, 0) if acked >= 0 else last,
                         "bytes": changelog.lag_bytes(acked) if acked >= 0 else 0}
        return out

    def progressed(self, node: str) -> None:
        if self.on_progress is not None:
            self.on_progress(node)

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
        self.store.detach(self)
        while self._pending:
            _, fut, _ = self._pending.popleft()
            if fut is not None and not fut.done():
                fut.set_exception(StoreError(f"vhost '{self.vhost}': {why}"))
        for session in list(self.sessions.values()):
            session.close()
        self.sessions.clear()


class SourceSession(wire.FramedProtocol):
    """The owner's side of one replica's session: catch-up (by stream or snapshot), then
    live records; acks and heartbeats flow back."""

    def __init__(self, source: ReplicationSource, node: str, position: tuple[int, int],
                 on_fenced: Callable[[int], None]) -> None:
        super().__init__()
        self.source = source
        self.node = node
        self.position = position
        self.on_fenced = on_fenced
        self.live = False
        self.sent = -1
        # a snapshot to this replica: its position, estimated size, bytes sent so far
        self.snapshot_position: int | None = None
        self.snapshot_bytes: int | None = None
        self.snapshot_sent = 0
        self.snapshot_done = False
        self._task: asyncio.Future[None] | None = None
        self._heard = self._said = time.monotonic()

    def start(self, transport: asyncio.Transport, link: wire.Link) -> None:
        self.source.attach(self.node, self)
        self.take_over(transport, link)
        self._task = asyncio.ensure_future(self._catch_up())

    # ------------------------------------------------------------------ sending

    def push(self, frame: bytes, offset: int) -> None:
        """A live record: written at once, unless the peer has fallen a window behind; then
        it is fed from the change log at its own pace (`_feed`)."""
        if not self.live:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > SEND_WINDOW_BYTES:
            self.live = False
            self._task = asyncio.ensure_future(self._feed())
            return
        self.send(frame)
        self.sent = offset
        self._said = time.monotonic()

    def tick(self, now: float) -> None:
        """Heartbeats: say something when idle; end a session whose peer went silent (a
        stopped or cut-off replica costs nothing after the lag timeout)."""
        if now - self._heard > self.source.lag_timeout:
            self.fail(f"no word from {self.node} for {now - self._heard:.1f} s")
            return
        if now - self._said >= HEARTBEAT_INTERVAL:
            self.send(wire.control({"t": "hb"}))
            self._said = now

    async def _catch_up(self) -> None:
        source, store = self.source, self.source.store
        changelog = source.changelog
        try:
            if continues_history(self.position, store.epochs, store.last_offset) and (
                    self.position[1] == store.last_offset
                    or changelog.since(self.position[1]) is not None):
                self.send(wire.control({"t": "hello", "mode": "stream",
                                        "epoch": source.epoch, "epochs": store.epochs,
                                        "hw": source.hw}))
                self.sent = self.position[1]
            else:
                # the copy is rebuilt: out of the in-sync set first, committed, so that it
                # is never promoted while it holds half a snapshot
                if not await source.out_of_sync(self.node, "its copy is rebuilt by snapshot"):
                    self.fail(f"could not take {self.node} out of the in-sync set before "
                              "its snapshot")
                    return
                self.send(wire.control({"t": "hello", "mode": "snapshot",
                                        "epoch": source.epoch}))
                position: tuple[int, int] = (0, 0)
                async for item in store.snapshot():
                    if item[0] == "begin":
                        position = tuple(item[1])  # type: ignore[assignment]
                        # the records after the snapshot must still be here at its end
                        changelog.pin(self, position[1])
                        self.send(wire.control({"t": "snap_begin"}))
                        self.snapshot_position = position[1]
                        self.snapshot_bytes = item[3] if len(item) > 3 else None
                    else:
                        frame = wire.control({"t": "snap_rows", "rows": item[1]})
                        self.send(frame)
                        self.snapshot_sent += len(frame)
                    source.progressed(self.node)
                    await self.drain()
                    if self.transport is None or self.transport.is_closing():
                        return
                # the owner's epoch list as it is now, not as the snapshot's transaction saw
                # it: a takeover may have begun a new epoch meanwhile
                self.send(wire.control({"t": "snap_end", "position": list(position),
                                        "epochs": store.epochs, "hw": source.hw}))
                self.sent = position[1]
                self.snapshot_done = True
                source.progressed(self.node)
            await self._feed()
        except (ConnectionError, StoreError) as e:
            self.fail(f"catch-up of {self.node} failed: {e}")
        except Exception:
            log.exception("%s: catch-up of %s failed", shards.label(self.source.vhost), self.node)
            self.fail("catch-up failed")

    async def _feed(self) -> None:
        """The records after ``sent``, from the change log, in batches the peer reads,
        until none is left: then live."""
        changelog = self.source.changelog
        try:
            while True:
                await self.drain()
                if self.transport is None or self.transport.is_closing():
                    return
                backlog = changelog.since(self.sent)
                if backlog is None:
                    self.fail("fell out of the change log; will resnapshot")
                    return
                if not backlog:
                    break
                size = 0
                for rec in backlog[:CATCH_UP_BATCH_RECORDS]:
                    self.send(wire.record(*rec))
                    self.sent = rec.offset
                    size += len(rec.payload)
                    if size >= CATCH_UP_BATCH_BYTES:
                        break
                changelog.pin(self, self.sent)
                self._said = time.monotonic()
            self.live = True
            changelog.unpin(self)
            if self.source.hw > 0:
                self.send(wire.control({"t": "hw", "offset": self.source.hw}))
        except ConnectionError:
            pass

    # ------------------------------------------------------------------ receiving

    def frame_received(self, kind: int, body: bytes) -> None:
        self._heard = time.monotonic()
        if kind == wire.ACK:
            epoch, offset = self.decode_ack(body)
            if epoch != self.source.epoch:
                return
            if offset > self.sent:
                raise wire.WireError(f"ack of offset {offset}, but only {self.sent} was sent")
            self.source.on_ack(self.node, offset)
        elif kind == wire.CONTROL:
            message = self.decode_control(body)
            t = message.get("t")
            if t == "fenced":
                newer = message.get("epoch")
                if not isinstance(newer, int) or newer <= self.source.epoch:
                    raise wire.WireError(f"'fenced' for epoch {newer!r}, not newer than "
                                         f"{self.source.epoch}")
                log.warning("%s: replica %s knows epoch %d (we write %d): stepping "
                            "down", shards.label(self.source.vhost), self.node, newer, self.source.epoch)
                self.on_fenced(newer)
            elif t != "hb":
                raise wire.WireError(f"unexpected control message {t!r}")
        else:
            raise wire.WireError(f"unexpected frame kind {kind}")

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._task is not None:
            self._task.cancel()
        self.source.changelog.unpin(self)
        self.source.detach(self.node, self)
