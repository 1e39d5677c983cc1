"""MetadataStore's membership guards on real pysyncobj over loopback: divergence checks of
the definitions (cluster/definitions_digest.py), Raft messages of another cluster dropped, and a join
whose outcome is unknown."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pysyncobj import FAIL_REASON

from cluster import definitions_digest
from cluster.definitions import DefinitionState
from cluster.raft import MembershipPending, MetadataStore
from tests.unit.test_raft import (
    cluster,
    eventually,
    leader_and_followers,
    run,
    submit_retrying,
)


def test_the_digest_ignores_dict_order_and_sees_any_difference() -> None:
    a, b = DefinitionState(), DefinitionState()
    for state, names in ((a, ["x", "y"]), (b, ["y", "x"])):
        for name in names:
            state.apply({"op": "add_vhost", "name": name})
    assert definitions_digest.state_digest(a) == definitions_digest.state_digest(b)
    b.vhosts["x"]["owner"] = "n9"
    assert definitions_digest.state_digest(a) != definitions_digest.state_digest(b)


def test_a_node_whose_definitions_diverged_is_told(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(definitions_digest, "INTERVAL", 0.2)

    async def main() -> None:
        async with cluster(tmp_path) as stores:
            leader, followers = leader_and_followers(stores)
            await submit_retrying(leader, {"op": "add_vhost", "name": "orders",
                                           "owner": "n1", "replicas": ["n2"]})
            await eventually(lambda: all(s.digest_status()["checks"] > 0 for s in stores),
                             timeout=20, what="a digest check on every node")
            assert [s.digest_status()["diverged"] for s in stores] == [None] * 3
            # one follower's state no longer matches its log (as after applying entries
            # written outside the cluster): Raft itself never notices
            odd = followers[0]
            await eventually(lambda: "orders" in odd.snapshot()["vhosts"], what="orders")
            with odd._replica.lock:
                odd._replica.state.vhosts["orders"]["owner"] = "n2"
            checks = odd.digest_status()["checks"]
            await submit_retrying(leader, {"op": "add_vhost", "name": "another"})
            await eventually(lambda: odd.digest_status()["checks"] > checks, timeout=20,
                             what="the next check on the odd node")
            diverged = odd.digest_status()["diverged"]
            assert diverged is not None and diverged["leader"] == leader.self_address
            assert diverged["digest"] != diverged["leader_digest"]
            for s in (leader, followers[1]):
                assert s.digest_status()["diverged"] is None

    run(main())


def test_raft_messages_of_another_cluster_are_dropped(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path) as stores:
            leader, followers = leader_and_followers(stores)
            await submit_retrying(leader, {"op": "add_vhost", "name": "orders"})
            for store in stores:
                store._replica.recorded_cluster_id = "this-cluster"
            stray = followers[0]
            stray._replica.recorded_cluster_id = "another-cluster"
            await submit_retrying(leader, {"op": "add_vhost", "name": "after"})
            await asyncio.sleep(1.0)
            assert "after" in leader.snapshot()["vhosts"]
            assert "after" not in stray.snapshot()["vhosts"]
            assert stray.self_address in leader._transport.foreign  # type: ignore[union-attr]
            assert "refused as members of another cluster" in stray.waiting_reason()

    run(main())


class _Machine:
    """A pysyncobj stand-in whose membership change answers as told."""

    def __init__(self, answer: int) -> None:
        self.answer = answer
        self.partners: list[str] = []

    def _getLeader(self) -> str:  # noqa: N802 - pysyncobj's name
        return "127.0.0.1:1"

    hasQuorum = True  # noqa: N815

    def isReady(self) -> bool:  # noqa: N802
        return True

    def addNodeToCluster(self, address: str, callback: Any) -> None:  # noqa: N802
        callback(None, self.answer)

    def getStatus(self) -> dict[str, Any]:  # noqa: N802
        return {"state": 2, "leader": "127.0.0.1:1", **{
            f"partner_node_status_server_{p}": 0 for p in self.partners}}


def test_a_join_of_unknown_outcome_stays_joining_until_the_configuration_settles(
        tmp_path: Path) -> None:
    async def main() -> None:
        store = MetadataStore(self_address="127.0.0.1:1", peers=[], data_dir=str(tmp_path),
                              secret="s", loop=asyncio.get_running_loop())
        machine = _Machine(FAIL_REASON.LEADER_CHANGED)
        store._machine = machine  # type: ignore[assignment]
        with pytest.raises(MembershipPending, match="outcome unknown"):
            await store.add_node("127.0.0.1:4")
        assert list(store.settle_joining()) == ["127.0.0.1:4"]
        machine.partners.append("127.0.0.1:4")  # committed after all
        assert store.settle_joining() == {}
        machine.answer = FAIL_REASON.REQUEST_DENIED  # a definite no is not "joining"
        with pytest.raises(Exception, match="denied") as refused:
            await store.add_node("127.0.0.1:5")
        assert not isinstance(refused.value, MembershipPending)
        assert store.settle_joining() == {}
        store._machine = None

    run(main())
