"""MetadataStore on real pysyncobj over loopback (free ports, tmp data dirs).

Three stores in one process are only a smoke test of replication; the real multi-process
cluster tests live in tests/cluster.  Latencies are printed (pytest -s), not asserted
tightly: CI machines vary.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import socket
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from cluster.definitions import DefinitionState
from cluster.raft import ClusterUnavailable, MetadataStore, normalize_address

SECRET = "test-cluster-secret"


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(coro: Awaitable[Any], timeout: float = 90.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.thread_ids: set[int] = set()

    def __call__(self, command: dict[str, Any], result: dict[str, Any]) -> None:
        self.thread_ids.add(threading.get_ident())
        self.events.append((command, result))

    def ops(self) -> list[str]:
        return [command["op"] for command, _ in self.events]


async def submit_retrying(store: MetadataStore, command: dict, attempts: int = 4) -> dict:
    """On a loaded machine an election can interrupt a change (pysyncobj then reports it
    as not committed): the tests that are about something else retry, as a client would."""
    for i in range(attempts):
        try:
            return await store.submit(command)
        except ClusterUnavailable:
            if i == attempts - 1:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


async def eventually(check: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return p50 * 1e3, p99 * 1e3


async def timed_submits(
    store: MetadataStore, vhost: str, prefix: str, n: int = 200
) -> tuple[float, float]:
    samples = []
    for i in range(n):
        command = {"op": "declare_queue", "vhost": vhost, "name": f"{prefix}{i}", "durable": True}
        t0 = time.perf_counter()
        result = await store.submit(command)
        samples.append(time.perf_counter() - t0)
        assert result["ok"] and result["created"], result
    return percentiles(samples)


def single(tmp_path: Path, port: int | None = None, secret: str | None = None) -> MetadataStore:
    return MetadataStore(
        self_address=f"127.0.0.1:{port or free_port()}",
        peers=[],
        data_dir=str(tmp_path),
        secret=secret,
    )


@contextlib.asynccontextmanager
async def cluster(
    tmp_path: Path, n: int = 3, recorders: list[Recorder] | None = None
) -> AsyncIterator[list[MetadataStore]]:
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(n)]
    stores = [
        # every node gets the full list, itself included: the store drops itself
        MetadataStore(
            self_address=address, peers=addresses, data_dir=str(tmp_path / f"n{i}"), secret=SECRET
        )
        for i, address in enumerate(addresses)
    ]
    for store, recorder in zip(stores, recorders or [], strict=False):
        store.subscribe(recorder)
    try:
        await asyncio.gather(*(store.start(timeout=30) for store in stores))
        yield stores
    finally:
        for store in stores:
            await store.close()


def leader_and_followers(stores: list[MetadataStore]) -> tuple[MetadataStore, list[MetadataStore]]:
    leaders = [s for s in stores if s.status()["state"] == "leader"]
    assert len(leaders) == 1, [s.status() for s in stores]
    return leaders[0], [s for s in stores if s is not leaders[0]]


@pytest.fixture(autouse=True)
def no_tick_threads_left() -> Any:
    yield
    deadline = time.monotonic() + 5
    while True:
        alive = [t for t in threading.enumerate() if "_autoTickThread" in t.name]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not alive, f"pysyncobj tick threads still running: {alive}"


# ---------------------------------------------------------------- configuration


def test_normalize_address() -> None:
    assert normalize_address("node1") == "node1:25672"
    assert normalize_address("node1:1234") == "node1:1234"
    with pytest.raises(ValueError):
        normalize_address("node1:http")


def test_peers_without_a_secret_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="a cluster of more than one node needs a cluster secret"):
        MetadataStore(
            self_address="127.0.0.1:1", peers=["127.0.0.1:2"], data_dir=str(tmp_path), secret=None
        )
    with pytest.raises(ValueError):
        MetadataStore(
            self_address="127.0.0.1:1", peers=["127.0.0.1:2"], data_dir=str(tmp_path), secret=""
        )
    # listing only itself is a cluster of one
    MetadataStore(
        self_address="127.0.0.1:1", peers=["127.0.0.1:1"], data_dir=str(tmp_path), secret=None
    )


def test_a_taken_raft_port_is_reported(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        store = single(tmp_path, port=blocker.getsockname()[1])

        async def main() -> None:
            try:
                with pytest.raises(OSError, match="cannot listen on the Raft port"):
                    await store.start(timeout=5)
            finally:
                await store.close()

        run(main())


# ---------------------------------------------------------------- one node


def test_single_node_submit_events_and_latency(tmp_path: Path) -> None:
    async def main() -> None:
        store = single(tmp_path)
        recorder = Recorder()
        store.subscribe(recorder)
        assert store.status()["started"] is False
        with pytest.raises(ClusterUnavailable):
            await store.submit({"op": "add_vhost", "name": "/"})
        t0 = time.perf_counter()
        await store.start()
        print(f"\nsingle node: start {1e3 * (time.perf_counter() - t0):.0f} ms")
        try:
            status = store.status()
            assert status["leader"] == status["self"] and status["state"] == "leader"
            assert status["has_quorum"] is True and status["partners"] == {}
            assert recorder.events == []  # fresh: nothing to replay, barrier not shown

            bootstrap = {
                "op": "bootstrap",
                "vhost": "/",
                "user": "guest",
                "password_hash": b"\x00hash",
                "hashing": "rabbit_password_hashing_sha256",
                "tags": ["administrator"],
            }
            result = await store.submit(bootstrap)
            assert result == {"ok": True, "applied": True}
            # read-your-writes: the event reached the loop before submit() returned
            assert recorder.events == [(bootstrap, result)]
            assert recorder.thread_ids == {threading.get_ident()}

            refused = await store.submit({"op": "delete_vhost", "name": "nope"})
            assert refused == {"ok": False, "code": 404, "text": "no vhost 'nope'"}
            assert recorder.events[-1][1] == refused  # refused commands are events too

            p50, p99 = await timed_submits(store, "/", "q")
            print(f"single node: 200 sequential submits p50 {p50:.3f} ms, p99 {p99:.3f} ms")
            assert p99 < 1000
            assert len(recorder.events) == 202
            assert [c["name"] for c, _ in recorder.events[2:]] == [f"q{i}" for i in range(200)]
            assert len(store.snapshot()["queues"]["/"]) == 200

            with pytest.raises(ValueError):
                await store.submit({"no": "op"})
            with pytest.raises(TypeError):
                unpackable: Any = {"op": "add_vhost", "name": object()}
                await store.submit(unpackable)
        finally:
            await store.close()
        await store.close()  # idempotent
        with pytest.raises(ClusterUnavailable):
            await store.submit({"op": "add_vhost", "name": "/"})

    run(main())


def test_restart_replays_the_journal(tmp_path: Path) -> None:
    port = free_port()
    commands: list[dict[str, Any]] = [
        {"op": "add_vhost", "name": "/"},
        {"op": "declare_exchange", "vhost": "/", "name": "x", "type": "topic", "durable": True},
        {"op": "declare_queue", "vhost": "/", "name": "q", "durable": True, "arguments": b"\0"},
        {"op": "bind", "vhost": "/", "source": "x", "destination": "q",
         "destination_type": "queue", "routing_key": "#"},
        {"op": "bind", "vhost": "/", "source": "nope", "destination": "q",
         "destination_type": "queue", "routing_key": "#"},
        {"op": "set_vhost_owner", "name": "/", "owner": "n1"},
    ]  # fmt: skip

    async def first() -> tuple[list[Any], dict[str, Any]]:
        store = single(tmp_path, port)
        recorder = Recorder()
        store.subscribe(recorder)
        await store.start()
        try:
            for command in commands:
                await store.submit(command)
            return recorder.events, store.snapshot()
        finally:
            await store.close()

    async def second() -> tuple[list[Any], dict[str, Any]]:
        store = single(tmp_path, port)
        recorder = Recorder()
        store.subscribe(recorder)
        await store.start()
        try:
            # the replay has been delivered when start() returns
            replayed = list(recorder.events)
            snapshot = store.snapshot()
            result = await store.submit({"op": "delete_queue", "vhost": "/", "name": "q"})
            assert result["deleted"] is True
            return replayed, snapshot
        finally:
            await store.close()

    events, snapshot = run(first())
    replayed, restored = run(second())
    assert replayed == events
    assert restored == snapshot
    assert restored["vhosts"]["/"]["epoch"] == 1
    assert restored["queues"]["/"]["q"]["arguments"] == b"\0"


def test_restart_after_compaction_starts_with_a_reset(tmp_path: Path) -> None:
    port = free_port()
    dump = tmp_path / "raft" / "dump"

    async def first() -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        store = single(tmp_path, port)
        recorder = Recorder()
        store.subscribe(recorder)
        await store.start()
        try:
            await store.submit({"op": "add_vhost", "name": "/"})
            for i in range(20):
                await store.submit({"op": "declare_queue", "vhost": "/", "name": f"a{i}",
                                    "durable": True})  # fmt: skip
            at_dump = store.snapshot()
            store.request_compaction()
            await eventually(dump.exists, what="the full dump")
            await eventually(lambda: store.status()["log_len"] <= 3, what="journal truncation")
            later = len(recorder.events)
            for i in range(5):
                await store.submit({"op": "declare_queue", "vhost": "/", "name": f"b{i}",
                                    "durable": True})  # fmt: skip
            return recorder.events[later:], at_dump, store.snapshot()
        finally:
            await store.close()

    async def second() -> tuple[list[Any], dict[str, Any]]:
        store = single(tmp_path, port)
        recorder = Recorder()
        store.subscribe(recorder)
        await store.start()
        try:
            return list(recorder.events), store.snapshot()
        finally:
            await store.close()

    after_dump, at_dump, final = run(first())
    # our dump is msgpack, not pysyncobj's gzip'ed pickle
    payload = msgpack.unpackb(dump.read_bytes(), raw=False)
    assert payload["magic"] == "warrenmq-definitions-dump"
    assert DefinitionState.loads(payload["state"]).snapshot() == at_dump

    events, restored = run(second())
    # the reset says where the dump ends in the log (the runtime's applied index)
    reset, result = events[0]
    assert reset == {"op": "reset"} and result["ok"] is True and result["state"] == at_dump
    assert isinstance(result["raft_index"], int) and result["raft_index"] > 21
    assert events[1:] == after_dump
    assert restored == final
    # a listener can rebuild the state from the reset plus the later commands
    rebuilt = DefinitionState.from_snapshot(events[0][1]["state"])
    for command, result in events[1:]:
        assert rebuilt.apply(command) == result
    assert rebuilt.snapshot() == final


# ---------------------------------------------------------------- the Raft port


class _Evil:
    """Unpickling this creates a file: proof that the bytes were unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


@pytest.mark.parametrize("secret", [SECRET, None], ids=["secret", "single-without-secret"])
def test_a_pickle_sent_to_the_raft_port_is_never_unpickled(
    tmp_path: Path, secret: str | None
) -> None:
    proof = tmp_path / "proof"
    target = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(str(target)), protocol=2)
    pickle.loads(pickle.dumps(_Evil(str(proof))))  # the payload does work when unpickled...
    assert proof.exists()
    proof.unlink()
    frames = [zlib.compress(evil, 3), evil, zlib.compress(pickle.dumps("127.0.0.1:1"), 3)]

    async def attack(port: int, frame: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(struct.pack("i", len(frame)) + frame)
            await writer.drain()
            # the node hangs up on bytes it cannot authenticate
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()

    async def main() -> None:
        port = free_port()
        store = single(tmp_path / "data", port, secret=secret)
        await store.start()
        try:
            for frame in frames:
                assert await attack(port, frame) == b""
            await asyncio.sleep(0.3)
            assert not target.exists(), "the Raft port unpickled an unauthenticated payload"
            result = await store.submit({"op": "add_vhost", "name": "/"})
            assert result["ok"] is True
            assert store.status()["state"] == "leader"
        finally:
            await store.close()

    run(main())
    assert not target.exists()


# ---------------------------------------------------------------- three nodes, one process


def test_three_nodes_replicate_and_a_follower_can_submit(tmp_path: Path) -> None:
    recorders = [Recorder() for _ in range(3)]

    async def main() -> None:
        async with cluster(tmp_path, recorders=recorders) as stores:
            leader, followers = leader_and_followers(stores)
            # two followers exchange nothing until one has something to say: on a busy
            # machine their link may still be coming up when the leader is known
            for _ in range(100):
                if all(sorted(st.status()["partners"].values()) == ["connected", "connected"]
                       for st in stores):
                    break
                await asyncio.sleep(0.1)
            for store in stores:
                status = store.status()
                assert status["has_quorum"] is True
                assert status["leader"] == leader.status()["self"]
                assert sorted(status["partners"].values()) == ["connected", "connected"]

            follower = followers[0]
            recorder = recorders[stores.index(follower)]
            command = {"op": "add_vhost", "name": "/", "description": "from a follower"}
            result = await follower.submit(command)
            assert result["ok"] is True and result["created"] is True
            assert recorder.events[-1] == (command, result)  # read-your-writes on a follower
            await eventually(
                lambda: all(s.snapshot() == follower.snapshot() for s in stores),
                what="the vhost on every node",
            )

            p50, p99 = await timed_submits(leader, "/", "l")
            print(f"\n3 nodes: 200 submits on the leader p50 {p50:.3f} ms, p99 {p99:.3f} ms")
            assert p99 < 1000
            p50, p99 = await timed_submits(follower, "/", "f")
            print(f"3 nodes: 200 submits on a follower p50 {p50:.3f} ms, p99 {p99:.3f} ms")
            assert p99 < 1000

            await eventually(
                lambda: all(len(r.events) == 401 for r in recorders), what="all events"
            )
            assert recorders[0].events == recorders[1].events == recorders[2].events
            snapshots = [s.snapshot() for s in stores]
            assert snapshots[0] == snapshots[1] == snapshots[2]
            assert len(snapshots[0]["queues"]["/"]) == 400

            # a node left alone refuses changes instead of hanging
            await leader.close()
            await followers[1].close()
            t0 = time.monotonic()
            with pytest.raises(ClusterUnavailable, match="cluster has no quorum"):
                await follower.submit({"op": "add_vhost", "name": "lonely"})
            assert time.monotonic() - t0 < 6.0

    run(main())


def test_no_quorum_is_refused_at_once(tmp_path: Path) -> None:
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]

    async def main() -> None:
        store = MetadataStore(
            self_address=addresses[0], peers=addresses[1:], data_dir=str(tmp_path), secret=SECRET
        )
        try:
            with pytest.raises(ClusterUnavailable, match="no Raft leader within"):
                await store.start(timeout=1.5)
            t0 = time.monotonic()
            with pytest.raises(ClusterUnavailable, match="cluster has no quorum"):
                await store.submit({"op": "add_vhost", "name": "/"})
            assert time.monotonic() - t0 < 0.5
            status = store.status()
            assert status["leader"] is None and status["has_quorum"] is False
            assert set(status["partners"]) == set(addresses[1:])
        finally:
            await store.close()

    run(main())


def test_a_follower_behind_the_compacted_log_gets_a_reset(tmp_path: Path) -> None:
    recorders = [Recorder() for _ in range(3)]

    async def main() -> None:
        async with cluster(tmp_path, recorders=recorders) as stores:
            leader, followers = leader_and_followers(stores)
            await submit_retrying(leader, {"op": "add_vhost", "name": "/"})
            lagging = followers[0]
            index = stores.index(lagging)
            address = lagging.status()["self"]
            await eventually(lambda: lagging.snapshot() == leader.snapshot())
            await lagging.close()

            for i in range(10):
                await submit_retrying(leader, {"op": "declare_queue", "vhost": "/",
                                               "name": f"q{i}", "durable": True})
            # every live member compacts: whichever leads when the laggard returns (a busy
            # machine may see a new election) no longer has the entries it missed
            live = [s for s in stores if s is not lagging]
            def compacted() -> bool:
                # the leader may append after a compaction (a definitions digest check, an
                # election's no-op): ask again until each log is short
                short = [s.status()["log_len"] <= 3 for s in live]
                for s, ok in zip(live, short, strict=True):
                    if not ok:
                        s.request_compaction()
                return all(short)
            await eventually(compacted, timeout=30, what="compaction")

            back = MetadataStore(
                self_address=address,
                peers=[s.status()["self"] for s in stores],
                data_dir=str(tmp_path / f"n{index}"),
                secret=SECRET,
            )
            recorder = Recorder()
            back.subscribe(recorder)
            stores[index] = back  # closed by cluster()
            await back.start(timeout=30)
            await eventually(lambda: back.snapshot() == leader.snapshot(), what="catch-up")
            assert "reset" in recorder.ops()
            assert len(back.snapshot()["queues"]["/"]) == 10

    run(main())


def test_status_and_snapshot_are_safe_from_the_loop_while_ticking(tmp_path: Path) -> None:
    async def main() -> None:
        store = single(tmp_path)
        await store.start()
        try:
            await store.submit({"op": "add_vhost", "name": "/"})

            async def writer() -> None:
                for i in range(100):
                    await store.submit({"op": "declare_queue", "vhost": "/", "name": f"q{i}",
                                        "durable": True})  # fmt: skip

            task = asyncio.create_task(writer())
            while not task.done():
                snap = store.snapshot()
                assert set(snap["queues"]["/"]) <= {f"q{i}" for i in range(100)}
                assert store.status()["state"] == "leader"
                # a real pause: spinning on the state lock (not a fair lock) could starve the
                # tick thread that applies the writes, which no caller of snapshot() does
                await asyncio.sleep(0.001)
            await task
            assert os.path.exists(tmp_path / "raft" / "journal")
        finally:
            await store.close()

    run(main())


def test_an_unreadable_dump_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "raft").mkdir()
    (tmp_path / "raft" / "dump").write_bytes(b"\x1f\x8bnot ours")

    async def main() -> None:
        store = single(tmp_path)
        try:
            with pytest.raises(RuntimeError, match="cannot load the definitions dump"):
                await store.start(timeout=10)
        finally:
            await store.close()

    run(main())


def test_applied_here_follows_the_listeners_and_can_be_waited_for(tmp_path: Path) -> None:
    """A queue link names the Raft index its node applied; the other node waits for it."""
    async def scenario() -> None:
        store = single(tmp_path, free_port())
        seen: list[int] = []
        store.subscribe(lambda _c, _r: seen.append(store.applied_here))
        await store.start()
        try:
            await store.submit({"op": "add_vhost", "name": "/"})
            first = store.applied_here
            await store.submit({"op": "add_vhost", "name": "other"})
            assert store.applied_here > first > 0
            # a listener sees its own change counted (what it sends names it)
            assert seen[-1] == store.applied_here
            assert await store.wait_applied(store.applied_here, 0.1) is True
            later = asyncio.ensure_future(store.wait_applied(store.applied_here + 1, 5.0))
            await asyncio.sleep(0.05)
            assert not later.done()
            await store.submit({"op": "add_vhost", "name": "third"})
            assert await later is True
            assert await store.wait_applied(store.applied_here + 10, 0.05) is False
        finally:
            await store.close()
    run(scenario())
