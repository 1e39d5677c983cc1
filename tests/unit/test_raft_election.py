"""Elections after the Raft leader's death (cluster/leader_watch.py), on three real
MetadataStores over loopback TCP in one process.

pysyncobj's election timeouts are raised to a minute here, so that nothing but
`leader_watch` calls an election: what these tests see is its doing, never a timeout's.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import cluster.leader_handoff as handoff
import cluster.leader_watch as leader_watch
import cluster.raft as raft
from cluster.leader_handoff import handoff_target
from cluster.raft import MetadataStore
from tests.unit.test_raft import SECRET, eventually, free_port, run

SLOW = 60.0  # pysyncobj's own election timeout in these tests


@pytest.fixture(autouse=True)
def slow_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raft, "RAFT_MIN_TIMEOUT", SLOW)
    monkeypatch.setattr(raft, "RAFT_MAX_TIMEOUT", SLOW + 1)


@contextlib.asynccontextmanager
async def three(tmp_path: Path) -> AsyncIterator[list[MetadataStore]]:
    """Three members; the first one stands for the first election (nobody else would)."""
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    stores = [MetadataStore(self_address=a, peers=addresses, data_dir=str(tmp_path / f"n{i}"),
                            secret=SECRET) for i, a in enumerate(addresses)]
    starting = asyncio.gather(*(s.start(timeout=30) for s in stores))
    try:
        await eventually(lambda: all(s._machine is not None for s in stores), 20,
                         "three Raft machines built")
        await eventually(lambda: all(s.status()["partners"] and set(
            s.status()["partners"].values()) == {"connected"} for s in stores), 20,
            "every member connected to every other")
        stores[0].call_election()
        await starting
        yield stores
    finally:
        for s in stores:
            await s.close()
        with contextlib.suppress(BaseException):
            await starting


def drop_appends_to(leader: MetadataStore, address: str) -> None:
    """The leader's append-entries (new entries and heartbeats) no longer reach
    ``address``: its log falls behind the other follower's."""
    transport = leader._machine._SyncObj__transport  # type: ignore[union-attr]
    send = transport.send

    def filtered(node: Any, message: dict[str, Any]) -> Any:
        if message.get("type") == "append_entries" and node.address == address:
            return None
        return send(node, message)
    transport.send = filtered


def test_the_survivor_with_the_longer_log_wins_after_refusing_the_first_candidate(
        tmp_path: Path) -> None:
    """The survivor whose turn comes first lacks the dead leader's last entry, so the other
    refuses its vote (Raft §5.4.1).  It then stands itself, at once, and wins: without
    that, nobody would stand again before pysyncobj's timeout (a minute here)."""
    async def main() -> None:
        async with three(tmp_path) as stores:
            leader = next(s for s in stores if s.status()["state"] == "leader")
            followers = sorted((s for s in stores if s is not leader),
                               key=lambda s: s.self_address)
            first, longer = followers  # `first` stands first: the lower address
            await leader.submit({"op": "add_vhost", "name": "both"})
            await eventually(lambda: all("both" in s.snapshot()["vhosts"] for s in stores),
                             10, "the first vhost everywhere")
            drop_appends_to(leader, first.self_address)
            await leader.submit({"op": "add_vhost", "name": "last"})
            await eventually(lambda: "last" in longer.snapshot()["vhosts"], 10,
                             "the last vhost on the follower that gets appends")
            assert "last" not in first.snapshot()["vhosts"]
            term = leader.status()["term"]

            await leader.close()  # its ports refuse connections now, as after kill -9
            await eventually(lambda: longer.status()["state"] == "leader"
                             and first.status()["leader"] == longer.self_address, 20,
                             "the survivor with the longer log elected")
            # the refused candidate stood once (term+1), the longer log at the next term
            assert longer.status()["term"] == term + 2
            await eventually(lambda: "last" in first.snapshot()["vhosts"], 10,
                             "the committed entry kept and replicated to the other survivor")
            result = await first.submit({"op": "add_vhost", "name": "after"})
            assert result["ok"] is True

    run(main())




def delay_vote_requests(store: MetadataStore, seconds: float) -> None:
    """``store``'s vote requests arrive ``seconds`` late, as on a loaded machine (each
    side fsyncs its term and vote around them)."""
    transport = store._machine._SyncObj__transport  # type: ignore[union-attr]
    send = transport.send

    def delayed(node: Any, message: dict[str, Any]) -> Any:
        if message.get("type") == "request_vote":
            threading.Timer(seconds, send, (node, message)).start()
            return None
        return send(node, message)
    transport.send = delayed


def test_a_slow_vote_request_does_not_split_the_vote(tmp_path: Path) -> None:
    """The first survivor in turn stands, but its vote request takes longer than a turn
    to arrive.  The other survivor, seeing it connected, does not stand too (that split
    the vote: each had voted for itself) and votes for it when the request comes."""
    async def main() -> None:
        async with three(tmp_path) as stores:
            leader = next(s for s in stores if s.status()["state"] == "leader")
            first, second = sorted((s for s in stores if s is not leader),
                                   key=lambda s: s.self_address)
            term = leader.status()["term"]
            delay_vote_requests(first, 3 * leader_watch.TURN)
            await leader.close()
            await eventually(lambda: first.status()["state"] == "leader"
                             and second.status()["leader"] == first.self_address, 20,
                             "the first survivor elected")
            assert first.status()["term"] == term + 1

    run(main())


def test_the_owner_lease_runs_from_the_last_contact_during_an_election(
        tmp_path: Path) -> None:
    """While the survivors elect a new leader, a survivor's last contact with a majority
    is the dead leader's last heartbeat, not "never": an owner lease counted from "never"
    stopped every owner in the cluster the moment the Raft leader died."""
    async def main() -> None:
        async with three(tmp_path) as stores:
            leader = next(s for s in stores if s.status()["state"] == "leader")
            first, _second = sorted((s for s in stores if s is not leader),
                                    key=lambda s: s.self_address)
            delay_vote_requests(first, 10 * leader_watch.TURN)
            before = first.majority_contact()
            assert before > 0
            await leader.close()
            await eventually(lambda: first.status()["state"] == "candidate", 20,
                             "an election under way")
            during = first.majority_contact()
            assert before <= during <= time.monotonic()

    run(main())


def test_a_vote_request_between_long_idle_followers_arrives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two followers exchange no Raft messages; pysyncobj drops a link that has read
    nothing for its connection timeout (3.5 s) when it next sends on it, so the first
    vote request after the leader's death was lost, both survivors stood at the same term
    and the election fell to the timeouts.  Links kept warm carry it: one round."""
    monkeypatch.setattr(raft, "RAFT_MIN_TIMEOUT", 3.0)  # the longest pysyncobj accepts
    monkeypatch.setattr(raft, "RAFT_MAX_TIMEOUT", 3.4)  # with its 3.5 s connection timeout

    async def main() -> None:
        async with three(tmp_path) as stores:
            leader = next(s for s in stores if s.status()["state"] == "leader")
            first, second = sorted((s for s in stores if s is not leader),
                                   key=lambda s: s.self_address)
            await asyncio.sleep(4.5)  # the followers' link idle past the timeout
            term = leader.status()["term"]
            await leader.close()
            await eventually(lambda: first.status()["state"] == "leader"
                             or second.status()["state"] == "leader", 20, "a new leader")
            elected = first if first.status()["state"] == "leader" else second
            assert elected.status()["term"] == term + 1, "the first election was lost"

    run(main())

# ---------------------------------------------------------------- leadership hand-off


def test_handoff_target_rules() -> None:
    owned = {"a:1": 2, "b:1": 0, "c:1": 1}
    everyone = {"b:1", "c:1"}
    # a leader that owns vhosts hands off to a connected member owning none
    assert handoff_target("a:1", owned, everyone, {"a:1", "c:1"}) == "b:1"
    # one that owns none keeps the role: leadership moves once and stays
    assert handoff_target("b:1", owned, {"a:1", "c:1"}, {"a:1", "c:1"}) is None
    # nobody better: every member owns a vhost
    assert handoff_target("a:1", {"a:1": 1, "b:1": 1, "c:1": 1}, everyone,
                          {"a:1", "b:1", "c:1"}) is None
    # an owner this leader cannot reach may be failing over: the leader stays
    assert handoff_target("a:1", owned, {"b:1"}, {"a:1", "c:1"}) is None
    # nor while a vhost is being moved
    assert handoff_target("a:1", {**owned, "moving": 1}, everyone, {"a:1", "c:1"}) is None
    # a member owning none but not connected is no target
    assert handoff_target("a:1", {"a:1": 1, "b:1": 0, "c:1": 0}, {"c:1"}, {"a:1"}) == "c:1"


def test_a_leader_that_owns_a_vhost_hands_leadership_to_a_member_owning_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raft, "RAFT_MIN_TIMEOUT", 0.4)  # ordinary elections here
    monkeypatch.setattr(raft, "RAFT_MAX_TIMEOUT", 0.8)

    async def main() -> None:
        async with three(tmp_path) as stores:
            leader = next(s for s in stores if s.status()["state"] == "leader")
            others = sorted((s for s in stores if s is not leader),
                            key=lambda s: s.self_address)
            for i, s in enumerate(stores):
                await leader.submit({"op": "register_node", "name": f"n{i}@h",
                                     "raft": s.self_address})
            name = {s: f"n{i}@h" for i, s in enumerate(stores)}
            # the leader and the first other member own a vhost each; the last owns none
            await leader.submit({"op": "add_vhost", "name": "on-leader",
                                 "owner": name[leader]})
            await leader.submit({"op": "add_vhost", "name": "on-other",
                                 "owner": name[others[0]]})
            idle = others[1]
            await eventually(lambda: idle.status()["state"] == "leader", 20,
                             "Raft leadership handed to the member that owns no vhost")
            for s in stores:
                await eventually(lambda s=s: s.status()["leader"] == idle.self_address, 10,
                                 "every member following the new leader")
            # it owns nothing: it keeps the role (and changes commit through it)
            result = await leader.submit({"op": "add_vhost", "name": "after"})
            assert result["ok"] is True
            await asyncio.sleep(handoff.SETTLED + handoff.CHECK_EVERY * 3)
            assert idle.status()["state"] == "leader"

    run(main())
