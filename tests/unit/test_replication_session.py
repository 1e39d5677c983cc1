"""The owner's end of a replication session, on a real LMDB store and a real socket, with
the replica's end played by the test: acks are checked against what was sent, and a copy
that must be rebuilt leaves the in-sync set (committed) before its snapshot begins."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from cluster import wire
from cluster.replication import ReplicationSource, SourceSession
from storage.store import MessageStore


class Proposals:
    """Stands in for Raft's set_in_sync: records each proposal and commits it."""

    def __init__(self) -> None:
        self.made: list[tuple[str, bool]] = []

    async def __call__(self, node: str, join: bool, epoch: int, hw: int) -> bool:
        self.made.append((node, join))
        return True


async def session_pair(source: ReplicationSource, node: str, position: tuple[int, int]
                       ) -> tuple[SourceSession, socket.socket]:
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()

    class Waiting(asyncio.Protocol):
        pass
    transport, _ = await loop.connect_accepted_socket(Waiting, ours)
    transport.pause_reading()
    session = SourceSession(source, node, position, lambda epoch: None)
    session.start(transport, wire.Link(None, None))  # type: ignore[arg-type]
    theirs.setblocking(False)
    return session, theirs


async def read_frames(sock: socket.socket, wait: float = 0.3) -> tuple[list, bool]:
    """Frames (kind, body) the owner sent within ``wait`` s; and whether it hung up."""
    loop = asyncio.get_running_loop()
    data, closed = b"", False
    deadline = loop.time() + wait
    while loop.time() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            await asyncio.sleep(0.01)
            continue
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        data += chunk
    frames, pos = [], 0
    while len(data) - pos >= 5:
        size, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4]
        frames.append((kind, data[pos + 5:pos + 4 + size]))
        pos += 4 + size
    return frames, closed


def test_an_ack_past_what_was_sent_ends_the_session_and_releases_nothing(
        tmp_path: Path) -> None:
    async def main() -> None:
        store = MessageStore(tmp_path / "owner")
        store.start(asyncio.get_running_loop())
        store.takeover(1)
        await store.flush()
        source = ReplicationSource("v", store, 1, ["r1"], min_in_sync=1, lag_timeout=30,
                                   propose=Proposals())
        session, replica = await session_pair(source, "r1", store.position)
        hello, _ = await read_frames(replica)
        assert [k for k, _ in hello] == [wire.CONTROL]
        store.put("q", 1, b"m")
        confirm = store.flush()
        frames, _ = await read_frames(replica)
        offsets = [wire.FramedProtocol.decode_record(b)[0] for k, b in frames
                   if k == wire.RECORD]
        assert offsets == [2] and not confirm.done()  # r1 is in sync: it must ack first
        replica.send(wire.ack(1, 99))  # an ack of a record never sent
        _, closed = await read_frames(replica)
        assert closed, "the session went on after an impossible ack"
        assert not confirm.done(), "an impossible ack released a confirm"
        assert source.acked.get("r1", -1) < 2
        source.close("test over")
        replica.close()
        await store.close()

    asyncio.run(main())


def test_a_copy_to_be_rebuilt_leaves_the_in_sync_set_before_its_snapshot(
        tmp_path: Path) -> None:
    async def main() -> None:
        store = MessageStore(tmp_path / "owner")
        store.start(asyncio.get_running_loop())
        store.takeover(2)
        store.put("q", 1, b"m")
        await store.flush()
        proposals = Proposals()
        source = ReplicationSource("v", store, 2, ["r1"], min_in_sync=1, lag_timeout=30,
                                   propose=proposals)
        # r1 says it holds epoch 1 up to offset 5: epoch 1 is not in the owner's history
        session, replica = await session_pair(source, "r1", (1, 5))
        frames, _ = await read_frames(replica, 1.0)
        controls = [wire.FramedProtocol.decode_control(b) for k, b in frames
                    if k == wire.CONTROL]
        assert controls[0]["t"] == "hello" and controls[0]["mode"] == "snapshot", controls
        assert proposals.made == [("r1", False)], proposals.made
        assert "r1" not in source.in_sync
        # the replica is required again only from its first ack after the snapshot
        end = next(c for c in controls if c["t"] == "snap_end")
        assert end["epochs"] == store.epochs
        replica.send(wire.ack(2, end["position"][1]))
        await asyncio.sleep(0.2)
        assert "r1" in source.joining or ("r1", True) in proposals.made
        source.close("test over")
        replica.close()
        await store.close()

    asyncio.run(main())


class Pending:
    """Raft's set_in_sync when no change commits for now (a round trip under way, or no
    leader): each proposal waits until the test answers it."""

    def __init__(self) -> None:
        self.waiting: list[tuple[str, bool, asyncio.Future[bool]]] = []

    async def __call__(self, node: str, join: bool, epoch: int, hw: int) -> bool:
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append((node, join, fut))
        return await fut


def test_one_copy_leaving_stops_holding_confirms_before_its_drop_commits(
        tmp_path: Path) -> None:
    """r2's session ends: confirms need r1 alone at once (a failover hears two copies, so
    one of them has them), but with both copies gone none is released until Raft has
    dropped them; and a drop that cannot commit keeps the copy out and is asked again."""
    async def main() -> None:
        store = MessageStore(tmp_path / "owner")
        store.start(asyncio.get_running_loop())
        store.takeover(1)
        await store.flush()
        proposals = Pending()
        source = ReplicationSource("v", store, 1, ["r1", "r2"], min_in_sync=1,
                                   lag_timeout=30, propose=proposals)
        sessions = {n: await session_pair(source, n, store.position) for n in ("r1", "r2")}
        store.put("q", 1, b"a")
        first = store.flush()
        await asyncio.sleep(0.05)
        source.on_ack("r1", store.last_offset)
        await asyncio.sleep(0.05)
        assert not first.done(), "confirmed without r2 while r2 counts"
        # an owner that has not heard a Raft majority lately (a paused process, resumed)
        # keeps waiting for the copy: a failover may be choosing without it
        source.may_exclude = lambda: False
        sessions["r2"][1].close()  # r2's node dies
        await asyncio.sleep(0.1)
        assert source.leaving == {"r2"} and [w[:2] for w in proposals.waiting] == [
            ("r2", False)]
        assert not first.done(), "confirmed without r2 by an owner out of touch with Raft"
        source.may_exclude = lambda: True
        source.on_ack("r1", store.last_offset)
        assert first.done() and first.exception() is None, "still held by the leaving r2"
        # the drop cannot commit (the Raft leader died with r2): r2 stays out, asked again
        proposals.waiting[0][2].set_exception(TimeoutError("no leader"))
        await asyncio.sleep(0.2)
        assert source.leaving == {"r2"}
        assert [w[:2] for w in proposals.waiting] == [("r2", False), ("r2", False)]
        store.put("q", 2, b"b")
        second = store.flush()
        await asyncio.sleep(0.05)
        source.on_ack("r1", store.last_offset)
        await asyncio.sleep(0.05)
        assert second.done() and second.exception() is None
        # r1 goes too: two copies on their way out, so nothing is confirmed on the
        # owner's copy alone until Raft has dropped them
        sessions["r1"][1].close()
        await asyncio.sleep(0.1)
        assert source.leaving == {"r1", "r2"}
        store.put("q", 3, b"c")
        third = store.flush()
        await asyncio.sleep(0.1)
        assert not third.done(), "confirmed on the owner's copy alone"
        for _, _, fut in proposals.waiting:
            if not fut.done():
                fut.set_result(True)
        source.update_in_sync([])  # what the committed drops say
        await asyncio.sleep(0.05)
        assert third.done() and third.exception() is None
        source.close("test over")
        await store.close()

    asyncio.run(main())
