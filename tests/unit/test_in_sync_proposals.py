"""The in-sync changes this node's units propose in one loop turn are one Raft entry; each
proposer still gets its own unit's answer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cluster.definitions import DefinitionState
from node.runtime.in_sync_proposals import InSyncProposals


def drop(name: str, epoch: int = 1) -> dict[str, Any]:
    return {"op": "set_in_sync", "name": name, "node": "n3", "in_sync": False,
            "expected_epoch": epoch, "confirmed": 5}


@pytest.fixture
def state() -> DefinitionState:
    s = DefinitionState()
    for name in ("a", "b"):
        assert s.apply({"op": "add_vhost", "name": name, "owner": "n1",
                        "replicas": ["n2", "n3"]})["ok"]
        for node in ("n2", "n3"):
            assert s.apply({"op": "set_in_sync", "name": name, "node": node,
                            "in_sync": True, "expected_epoch": 1})["ok"]
    return s


def test_changes_of_one_turn_are_one_entry_and_answered_each(state: DefinitionState) -> None:
    entries: list[dict[str, Any]] = []

    async def submit(cmd: dict[str, Any]) -> dict[str, Any]:
        entries.append(cmd)
        await asyncio.sleep(0)
        return state.apply(cmd)

    async def main() -> None:
        p = InSyncProposals(submit)
        a, b, stale = await asyncio.gather(p.propose(drop("a")), p.propose(drop("b")),
                                           p.propose(drop("a", epoch=0)))
        assert [e["op"] for e in entries] == ["set_in_sync_many"]
        assert (a["ok"], b["ok"], stale["ok"]) == (True, True, False)
        assert a["vhost"]["in_sync"] == ["n2"] and b["vhost"]["name"] == "b"
        # alone in its turn: the plain entry
        alone = await p.propose({**drop("b"), "node": "n2"})
        assert entries[-1]["op"] == "set_in_sync" and alone["vhost"]["in_sync"] == []
    asyncio.run(main())


def test_an_entry_that_cannot_commit_fails_every_proposer() -> None:
    async def submit(cmd: dict[str, Any]) -> dict[str, Any]:
        raise TimeoutError("no quorum")

    async def main() -> None:
        p = InSyncProposals(submit)
        results = await asyncio.gather(p.propose(drop("a")), p.propose(drop("b")),
                                       return_exceptions=True)
        assert [type(r) for r in results] == [TimeoutError, TimeoutError]
    asyncio.run(main())
