"""A vhost store's change log, records and snapshots, between two real LMDB stores: what a
replica applies must leave it holding exactly what the owner holds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from storage import records
from storage.changelog import ChangeLog
from storage.store import MessageStore, StoreError


class Hook:
    """A replication hook that streams into a list and releases confirms at once."""

    def __init__(self, streamed: list) -> None:
        self.streamed = streamed

    def record(self, offset: int, epoch: int, payload: bytes) -> None:
        self.streamed.append((offset, epoch, payload))

    def committed(self, offset: int, fut: asyncio.Future | None) -> None:
        if fut is not None and not fut.done():
            fut.set_result(None)


def contents(store: MessageStore, queues: list[str]) -> dict[str, list]:
    return {q: store.read_range(q, 0, 10_000) for q in queues}


async def open_store(path: Path) -> MessageStore:
    store = MessageStore(path)
    store.start(asyncio.get_running_loop())
    return store


def test_records_stream_to_a_replica_and_positions_survive_reopen(tmp_path: Path) -> None:
    async def main() -> None:
        owner = await open_store(tmp_path / "owner")
        replica = await open_store(tmp_path / "replica")
        owner.takeover(1)
        owner.keep_changelog()
        replica.become_replica()
        replica.keep_changelog()
        streamed: list[tuple[int, int, bytes]] = []
        owner.attach(Hook(streamed))

        for i in range(1, 101):
            owner.put("q", i, b"m%d" % i)
        await owner.flush()
        for i in range(1, 51):
            owner.delete("q", i)
        owner.mark_delivered("q", 60)
        owner.put("other", 1, b"x")
        await owner.flush()
        owner.delete_queue("other")
        owner.put("other", 2, b"y")
        await owner.flush()

        offsets = [o for o, _, _ in streamed]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
        assert all(e == 1 for _, e, _ in streamed)
        replica.adopt_epochs(owner.epochs)
        for o, e, p in streamed:
            fut = replica.apply_record(o, e, p)
        await fut
        assert contents(replica, ["q", "other"]) == contents(owner, ["q", "other"])
        assert replica.position == owner.position == (1, offsets[-1])
        assert replica.changelog.since(offsets[0]) is not None
        await owner.close()
        await replica.close()

        again = await open_store(tmp_path / "replica")
        assert again.position == (1, offsets[-1])
        assert again.epochs == [[1, 1]]
        assert again.read_range("q", 0, 2) == [(51, b"m51", False), (52, b"m52", False)]
        assert (60, b"m60", True) in again.read_range("q", 0, 100)
        await again.close()

    asyncio.run(main())


def test_snapshot_then_stream_catches_up_without_pausing_the_owner(tmp_path: Path) -> None:
    async def main() -> None:
        owner = await open_store(tmp_path / "owner")
        owner.takeover(3)
        owner.keep_changelog()
        for i in range(1, 2001):
            owner.put("big", i, b"%d" % i * 50)
        for i in range(1, 11):
            owner.mark_delivered("big", i)
        await owner.flush()

        replica = await open_store(tmp_path / "replica")
        replica.become_replica()
        replica.put("stale", 1, b"local writes of a replica are ignored")
        # a stale queue from an earlier life must be wiped by the snapshot
        await replica.apply_record(1, 1, records.encode([("stale", False, {7: b"old"}, [], [])]))
        with pytest.raises(StoreError, match="no local writes"):
            await replica.flush()  # a publish that reached a replica's store is never confirmed

        snap = owner.snapshot(chunk_bytes=10_000)
        kind, position, epochs, size = await snap.__anext__()
        assert kind == "begin" and epochs == [[3, 1]]
        assert size >= 2000 * 150  # the estimate covers the 2000 messages of 50-200 bytes
        # the owner goes on writing while the snapshot is read
        for i in range(2001, 2101):
            owner.put("big", i, b"late")
        await owner.flush()
        replica.begin_snapshot()
        chunks = 0
        async for item in snap:
            replica.load_snapshot(item[1])
            chunks += 1
        assert chunks > 1
        await replica.end_snapshot(position, epochs)
        for rec in owner.changelog.since(position[1]):
            fut = replica.apply_record(*rec)
        await fut
        assert contents(replica, ["big", "stale"]) == contents(owner, ["big", "stale"])
        assert replica.read_range("stale", 0, 10) == []
        assert replica.position == owner.position
        await owner.close()
        await replica.close()

    asyncio.run(main())


def test_a_promoted_replica_numbers_after_what_it_holds(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "s")
        store.become_replica()
        await store.apply_record(41, 2, records.encode([("q", False, {1: b"a"}, [], [])]))
        assert store.position == (2, 41)
        store.takeover(3)
        store.keep_changelog()
        store.attach(Hook(streamed := []))
        store.put("q", 2, b"b")
        await store.flush()
        assert store.epochs == [[2, 41], [3, 42]]  # epoch 2 learnt from its record
        seen = [(o, e) for o, e, _ in streamed]
        assert seen == [(42, 3)]  # the epoch's first record: its history starts there
        assert store.position == (3, 42)
        await store.close()

    asyncio.run(main())


def test_confirm_gate_holds_flush_until_released(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "s")
        held: list[tuple[int, asyncio.Future | None]] = []

        class Gate(Hook):
            def committed(self, offset: int, fut: asyncio.Future | None) -> None:
                held.append((offset, fut))
        store.attach(Gate([]))
        store.put("q", 1, b"a")
        fut = store.flush()
        await asyncio.sleep(0.2)
        assert not fut.done()
        assert held and held[-1][1] is fut
        fut.set_result(None)
        await store.close()

    asyncio.run(main())


@pytest.mark.parametrize("payload", [
    b"\x01", records.encode([["q", False, {"x": b"a"}, [], []]]),
    records.encode([["q", False, {1: "str"}, [], []]]), records.encode([["q", 1, {}, [], []]]),
    records.encode([["q", False, {}, [-1], []]]), records.encode({"q": 1}),
])
def test_malformed_records_are_refused(payload: bytes) -> None:
    with pytest.raises(records.RecordError):
        records.decode(payload)


def test_changelog_window() -> None:
    log = ChangeLog(max_bytes=10)
    assert log.since(0) is None
    for o in range(5, 9):
        log.append(o, 1, b"abcd")
    assert [r.offset for r in log.since(6)] == [7, 8]  # 5 and 6 were dropped: 12 > 10 bytes
    assert log.since(5) is None
    assert log.since(8) == []
    assert log.since(9) is None
    log.pin("catching-up", 7)  # a replica that still needs 8 and later
    log.append(9, 1, b"abcd")
    assert [r.offset for r in log.since(7)] == [8, 9]
    log.unpin("catching-up")
    log.append(10, 1, b"abcd")
    assert log.since(7) is None
    log.clear()
    log.expect(12)  # a log started on a store that holds 11 records
    assert log.since(11) == [] and log.since(10) is None
    log.append(20, 2, b"x")  # a gap starts the window afresh
    assert log.since(19) == [(20, 2, b"x")]
    assert log.since(8) is None


def test_a_replica_applies_range_deletes_identically(tmp_path: Path) -> None:
    async def main() -> None:
        owner = await open_store(tmp_path / "owner")
        replica = await open_store(tmp_path / "replica")
        owner.takeover(1)
        owner.keep_changelog()
        replica.become_replica()
        streamed: list[tuple[int, int, bytes]] = []
        owner.attach(Hook(streamed))

        for i in range(1, 3001):
            owner.put("q", i, b"m%d" % i)
            owner.put("keep", i, b"k%d" % i)
        owner.mark_delivered("q", 5)
        owner.mark_delivered("q", 2500)
        await owner.flush()
        owner.put("q", 3001, b"pending")
        owner.purge_range("q", 10, 3002)  # a purge of the paged part: one op, one record
        owner.put("q", 3002, b"after")
        await owner.flush()
        payloads = [records.decode(p) for _, _, p in streamed]
        assert [(lo, hi) for ch in payloads[-1] for lo, hi in ch[5]] == [(10, 3002)]
        assert len(streamed[-1][2]) < 200  # the range, not 3000 deletes

        replica.adopt_epochs(owner.epochs)
        for o, e, p in streamed:
            fut = replica.apply_record(o, e, p)
        await fut
        assert contents(replica, ["q", "keep"]) == contents(owner, ["q", "keep"])
        assert [s for s, _, _ in owner.read_range("q", 0, 100)] == list(range(1, 10)) + [3002]
        assert replica.position == owner.position
        await owner.close()
        await replica.close()
        # and from disk, after reopening
        owner = await open_store(tmp_path / "owner")
        replica = await open_store(tmp_path / "replica")
        assert contents(replica, ["q", "keep"]) == contents(owner, ["q", "keep"])
        assert replica.count("q")[0] == 10
        await owner.close()
        await replica.close()

    asyncio.run(main())


@pytest.mark.parametrize("entry", [
    ["q", False, {}, [], [], [[5, 5]]], ["q", False, {}, [], [], [[1]]],
    ["q", False, {}, [], [], [[-1, 4]]], ["q", False, {}, [], [], {"1": 2}],
])
def test_malformed_range_deletes_are_refused(entry: list) -> None:
    with pytest.raises(records.RecordError):
        records.decode(records.encode([entry]))  # type: ignore[list-item]


def test_takeover_seals_what_the_replica_took_before_the_new_owner_writes(tmp_path: Path
                                                                           ) -> None:
    """A promoted node's first writes never merge into a generation that still carries the
    previous owner's offset: they are numbered, streamed and committed as its own."""
    async def main() -> None:
        store = await open_store(tmp_path / "s")
        store.become_replica()
        store.apply_record(7, 1, records.encode([("q", False, {1: b"a"}, [], [])]))
        # not committed yet: the open generation holds record 7 of epoch 1
        store.takeover(2)
        store.keep_changelog()
        streamed: list = []
        store.attach(Hook(streamed))
        store.put("q", 2, b"b")
        await store.flush()
        assert [(o, e) for o, e, _ in streamed] == [(8, 2)]
        assert store.position == (2, 8)
        assert store.epochs == [[1, 7], [2, 8]]
        change = records.decode(streamed[0][2])
        assert [(q, puts) for q, _, puts, *_ in change] == [("q", {2: b"b"})]
        await store.close()

    asyncio.run(main())


def test_an_owner_waiting_for_its_epoch_numbers_nothing_until_takeover(tmp_path: Path
                                                                        ) -> None:
    """Writes made while a restarted owner claims its new epoch are held, then numbered in
    the new epoch: never in the old one, where a replica may hold other records at the
    same offsets (streamed before the owner's own fsync, lost in its crash)."""
    async def main() -> None:
        store = await open_store(tmp_path / "s")
        store.takeover(3)
        store.put("q", 1, b"a")
        await store.flush()
        assert store.position == (3, 1)
        await store.close()

        store = await open_store(tmp_path / "s")
        store.hold()
        store.put("q", 2, b"held")
        fut = store.flush()
        await asyncio.sleep(0.2)
        assert not fut.done() and store.position == (3, 1)
        assert store.read_range("q", 0, 10)[-1][1] == b"held"  # read-your-writes meanwhile
        store.keep_changelog()
        streamed: list = []
        store.attach(Hook(streamed))
        store.takeover(4)
        await fut
        assert [(o, e) for o, e, _ in streamed] == [(2, 4)]
        assert store.position == (4, 2) and store.epochs == [[3, 1], [4, 2]]
        await store.close()

        # a term that never began keeps nothing it wrote
        store = await open_store(tmp_path / "s")
        store.hold()
        store.put("q", 3, b"never")
        fut = store.flush()
        store.become_replica()
        with pytest.raises(StoreError):
            await fut
        assert store.position == (4, 2)
        assert [s for s, _, _ in store.read_range("q", 0, 10)] == [1, 2]
        await store.close()

    asyncio.run(main())


def test_the_node_budget_caps_every_change_log_together() -> None:
    from storage.changelog import Budget
    budget = Budget(100)
    a, b = ChangeLog(max_bytes=80, budget=budget), ChangeLog(max_bytes=80, budget=budget)
    for o in range(1, 8):
        a.append(o, 1, b"x" * 10)
    for o in range(1, 8):
        b.append(o, 1, b"y" * 10)
    assert budget.used <= 100 and a.nbytes + b.nbytes == budget.used
    a.pin("slow replica", 0)  # a pin does not outlive the node's cap
    for o in range(8, 20):
        a.append(o, 1, b"x" * 10)
    assert budget.used <= 100
    a.close()
    assert budget.used == b.nbytes


class Gate:
    """A replication hook that releases nothing (replicas that have not acked)."""

    def record(self, offset: int, epoch: int, payload: bytes) -> None:
        pass

    def committed(self, offset: int, fut: asyncio.Future | None) -> None:
        pass


def test_what_an_owner_wrote_and_nobody_acked_is_never_confirmed_once_it_steps_down(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write still queued behind the writer when the owner steps down (its replication
    source closed, the store a replica) is no part of the new owner's history: its flush
    future fails, never resolves as if the store had no replicas to wait for."""
    import threading
    first_commit_started, let_it_finish = threading.Event(), threading.Event()
    real_commit = MessageStore._commit

    def slow_commit(self: MessageStore, gen, position) -> None:  # type: ignore[no-untyped-def]
        if not first_commit_started.is_set():
            first_commit_started.set()
            let_it_finish.wait(10)
        real_commit(self, gen, position)
    monkeypatch.setattr(MessageStore, "_commit", slow_commit)

    async def main() -> None:
        owner = await open_store(tmp_path / "owner")
        owner.takeover(1)
        owner.keep_changelog()
        gate = Gate()
        owner.attach(gate)
        owner.put("q", 1, b"a")
        await asyncio.to_thread(first_commit_started.wait, 10)  # the writer is busy
        owner.put("q", 2, b"b")  # queued behind it
        second = owner.flush()
        owner.become_replica()  # deposed: as the node steps down
        owner.detach(gate)
        let_it_finish.set()
        with pytest.raises(StoreError):
            await asyncio.wait_for(second, 10)
        await owner.close()

    asyncio.run(main())
