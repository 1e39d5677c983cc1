"""The management plane reads the replicated records (vhosts, members, users, permissions,
policies) as typed, frozen records built from what Raft committed (node/runtime/records.py),
never as the mirror's dicts."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from cluster.definitions import DefinitionState
from node.runtime.broker import Broker
from node.runtime.records import (
    MemberRecord,
    PermissionRecord,
    PolicyRecord,
    UserRecord,
    VhostRecord,
)
from node.runtime.state import Runtime
from tests.unit.in_process import with_broker

HTTP = Path(__file__).resolve().parents[2] / "node" / "http"


def committed(*commands: dict[str, Any]) -> Runtime:
    """A runtime whose replicated tables are what the definitions state machine holds
    after `commands`, as the mirror takes them from a snapshot."""
    state = DefinitionState()
    for cmd in commands:
        result = state.apply(cmd)
        assert result["ok"], (cmd, result)
    snap = state.snapshot()
    runtime = Runtime("n1")
    runtime.vhost_defs = dict(snap["vhosts"])
    runtime.nodes = dict(snap["nodes"])
    runtime.users = dict(snap["users"])
    runtime.permissions = {v: dict(p) for v, p in snap["permissions"].items()}
    runtime.policies = {v: dict(p) for v, p in snap["policies"].items()}
    return runtime


def test_records_carry_the_committed_values() -> None:
    records = committed(
        {"op": "register_node", "name": "n1", "raft": "10.0.0.1:7000",
         "forward": "10.0.0.1:7001", "amqp": "10.0.0.1:5672", "http": "10.0.0.1:15672"},
        {"op": "register_node", "name": "n2", "raft": "10.0.0.2:7000"},
        {"op": "add_vhost", "name": "/"},
        {"op": "add_vhost", "name": "orders", "description": "Order flow",
         "tags": ["prod", "eu"], "default_queue_type": "quorum", "owner": "n1",
         "replicas": ["n2"], "replication_factor": 2},
        {"op": "set_vhost_limits", "name": "orders",
         "limits": {"max-queues": 10, "max-connections": -1}},
        {"op": "set_in_sync", "name": "orders", "node": "n2", "in_sync": False,
         "confirmed": 42, "expected_epoch": 1},
        {"op": "set_in_sync", "name": "orders", "node": "n2", "in_sync": True,
         "expected_epoch": 1},
        {"op": "add_user", "name": "alice", "password_hash": "h-alice",
         "hashing": "rabbit_password_hashing_sha512", "tags": ["management", "policymaker"]},
        {"op": "add_user", "name": "bob", "password_hash": "h-bob", "hashing": "",
         "tags": []},
        {"op": "set_permissions", "user": "bob", "vhost": "orders", "configure": "^bob\\.",
         "write": ".*", "read": ""},
        {"op": "set_permissions", "user": "alice", "vhost": "orders", "configure": ".*",
         "write": ".*", "read": ".*"},
        {"op": "set_permissions", "user": "alice", "vhost": "/", "configure": "",
         "write": "", "read": ".*"},
        {"op": "set_policy", "vhost": "orders", "name": "ttl", "pattern": "^t\\.",
         "definition": {"message-ttl": 1000}, "priority": 1, "apply_to": "queues"},
        {"op": "set_policy", "vhost": "orders", "name": "everything", "pattern": ".*",
         "definition": {"max-length": 5}, "priority": 0, "apply_to": "all"},
    ).records

    assert records.vhost("orders") == VhostRecord(
        name="orders", description="Order flow", tags=("prod", "eu"),
        default_queue_type="quorum", owner="n1", epoch=1, replicas=("n2",),
        in_sync=("n2",), replication_factor=2, limits={"max-queues": 10}, confirmed=42)
    assert records.vhost("/") == VhostRecord(name="/")
    assert records.vhost("nowhere") is None
    assert [v.name for v in records.vhosts()] == ["/", "orders"]

    assert records.members() == [
        MemberRecord("n1", raft="10.0.0.1:7000", forward="10.0.0.1:7001",
                     amqp="10.0.0.1:5672", http="10.0.0.1:15672"),
        MemberRecord("n2", raft="10.0.0.2:7000")]
    assert records.member("n2") == MemberRecord("n2", raft="10.0.0.2:7000")
    assert records.member("n3") is None

    assert records.user("alice") == UserRecord(
        "alice", "h-alice", "rabbit_password_hashing_sha512", ("management", "policymaker"))
    assert [u.name for u in records.users()] == ["alice", "bob"]
    assert records.user("carol") is None

    # vhost by vhost, in commit order within each
    assert records.permissions() == [
        PermissionRecord("alice", "/", "", "", ".*"),
        PermissionRecord("bob", "orders", "^bob\\.", ".*", ""),
        PermissionRecord("alice", "orders", ".*", ".*", ".*")]
    assert records.permissions("/") == [PermissionRecord("alice", "/", "", "", ".*")]
    assert [(p.vhost, p.configure) for p in records.permissions(user="alice")] == [
        ("/", ""), ("orders", ".*")]
    assert records.permission("orders", "bob") == PermissionRecord(
        "bob", "orders", "^bob\\.", ".*", "")
    assert records.permission("/", "bob") is None

    assert records.policy("orders", "ttl") == PolicyRecord(
        "orders", "ttl", "^t\\.", {"message-ttl": 1000}, 1, "queues")
    assert [p.name for p in records.policies("orders")] == ["ttl", "everything"]
    assert records.policies("/") == []
    # the broker's rule: highest priority whose pattern and apply-to match
    assert records.policy_for("orders", "queue", "t.1") == records.policy("orders", "ttl")
    assert records.policy_for("orders", "exchange", "t.1") == records.policy(
        "orders", "everything")
    assert records.policy_for("/", "queue", "t.1") is None


def test_records_are_read_only_copies() -> None:
    runtime = committed(
        {"op": "add_vhost", "name": "v", "tags": ["a"]},
        {"op": "set_policy", "vhost": "v", "name": "p", "pattern": ".*",
         "definition": {"max-length": 1}, "priority": 0, "apply_to": "all"})
    v = runtime.records.vhost("v")
    assert v is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.owner = "elsewhere"  # type: ignore[misc]
    p = runtime.records.policy("v", "p")
    assert p is not None
    dict(p.definition)["max-length"] = 99
    assert runtime.policies["v"]["p"]["definition"] == {"max-length": 1}
    assert runtime.records.policy("v", "p") == p


def test_records_follow_what_the_mirror_applies(tmp_path: Path) -> None:
    """Through a real (single-node) Raft and the runtime mirror: every change, including
    the ones the mirror applies in place (tags, passwords, limits), shows in the records."""
    async def check(broker: Broker) -> None:
        d, records = broker.definitions, broker.runtime.records
        me = broker.settings.node_name
        await d.add_vhost("orders", "Order flow", ["prod"], "quorum")
        await d.set_vhost_limits("orders", {"max-queues": 5})
        await d.add_user("dora", "h1", ["monitoring"])
        await d.set_user_tags("dora", ["administrator"])
        await d.change_password("dora", "h2", "rabbit_password_hashing_md5")
        await d.set_permissions("dora", "orders", "c", "w", "r")
        await d.set_policy("orders", "lim", "^q", {"max-length": 3}, 7, "queues")

        v = records.vhost("orders")
        assert v is not None
        assert (v.description, v.tags, v.default_queue_type, v.owner, v.epoch, v.limits) == (
            "Order flow", ("prod",), "quorum", me, 1, {"max-queues": 5})
        assert records.user("dora") == UserRecord(
            "dora", "h2", "rabbit_password_hashing_md5", ("administrator",))
        assert records.permission("orders", "dora") == PermissionRecord(
            "dora", "orders", "c", "w", "r")
        assert records.policy_for("orders", "queue", "q1") == PolicyRecord(
            "orders", "lim", "^q", {"max-length": 3}, 7, "queues")
        member = records.member(me)
        assert member is not None and member.name == me
        assert member.raft == broker.settings.raft_address

        await d.delete_user("dora")
        assert records.user("dora") is None and records.permissions(user="dora") == []
        await d.delete_vhost("orders")
        assert records.vhost("orders") is None and records.policies("orders") == []

    with_broker(tmp_path, check)


def test_node_http_reads_no_replicated_dicts() -> None:
    """The management plane goes through `runtime.records` for the replicated records."""
    raw = ("vhost_defs", "runtime.nodes", "runtime.users", "runtime.permissions",
           "runtime.policies")
    found = [f"{path.name}:{n}: {line.strip()}" for path in sorted(HTTP.glob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if any(name in line for name in raw)]
    assert found == []
