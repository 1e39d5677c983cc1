"""DefinitionState: every op, refusals, snapshots through msgpack, deterministic replay."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from cluster.definitions import (
    DEFAULT_EXCHANGES,
    EMPTY_ARGUMENTS,
    DefinitionState,
    binding_key,
)

ARGS = b"\x00\x00\x00\x0b\x05x-ttlI\x00\x00\x03\xe8"  # some opaque field table


def some(definition: dict[str, Any] | None) -> dict[str, Any]:
    assert definition is not None
    return definition


def ok(state: DefinitionState, **command: Any) -> dict[str, Any]:
    result = state.apply(command)
    assert result["ok"] is True, result
    return result


def refused(state: DefinitionState, code: int, **command: Any) -> str:
    before = state.snapshot()
    result = state.apply(command)
    assert result["ok"] is False, result
    assert result["code"] == code, result
    assert set(result) == {"ok", "code", "text"}
    assert state.snapshot() == before, "a refused command must not change the state"
    return result["text"]


@pytest.fixture
def state() -> DefinitionState:
    s = DefinitionState()
    ok(s, op="add_vhost", name="/")
    return s


def declare_x(state: DefinitionState, name: str, vhost: str = "/", **kw: Any) -> dict[str, Any]:
    fields = {"type": "direct", "durable": True, "auto_delete": False, "internal": False}
    fields.update(kw)
    return ok(state, op="declare_exchange", vhost=vhost, name=name, **fields)


def declare_q(state: DefinitionState, name: str, vhost: str = "/", **kw: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"durable": True, "auto_delete": False, "exclusive": False}
    fields.update(kw)
    return ok(state, op="declare_queue", vhost=vhost, name=name, **fields)


def bind_q(state: DefinitionState, source: str, queue: str, key: str = "", **kw: Any) -> dict:
    return ok(
        state,
        op="bind",
        vhost="/",
        source=source,
        destination=queue,
        destination_type="queue",
        routing_key=key,
        arguments=kw.pop("arguments", EMPTY_ARGUMENTS),
        **kw,
    )


# ---------------------------------------------------------------- vhosts


def test_add_vhost_creates_it_with_the_predeclared_exchanges() -> None:
    s = DefinitionState()
    result = ok(s, op="add_vhost", name="prod", description="d", tags=["a"], owner="n1")
    assert result["created"] is True
    assert result["vhost"] == {
        "name": "prod",
        "description": "d",
        "tags": ["a"],
        "default_queue_type": "classic",
        "owner": "n1",
        "epoch": 1,
        "replicas": [],
        "in_sync": [],
        "replication_factor": None,
    }
    assert set(s.exchanges["prod"]) == set(DEFAULT_EXCHANGES)
    assert some(s.exchange("prod", "amq.topic"))["type"] == "topic"
    assert some(s.exchange("prod", "amq.rabbitmq.trace"))["internal"] is True
    assert some(s.exchange("prod", ""))["arguments"] == EMPTY_ARGUMENTS
    assert s.list_queues("prod") == [] and s.list_bindings("prod") == []


def test_add_vhost_again_updates_metadata_but_not_placement(state: DefinitionState) -> None:
    ok(state, op="set_vhost_owner", name="/", owner="n1")
    declare_q(state, "q")
    result = ok(state, op="add_vhost", name="/", description="new", default_queue_type="quorum")
    assert result["created"] is False
    assert result["vhost"]["description"] == "new"
    assert result["vhost"]["default_queue_type"] == "quorum"
    assert (result["vhost"]["owner"], result["vhost"]["epoch"]) == ("n1", 1)
    assert state.queue("/", "q") is not None


def test_delete_vhost_drops_everything_in_it(state: DefinitionState) -> None:
    ok(state, op="add_vhost", name="other")
    ok(state, op="add_user", name="u", password_hash="h", hashing="sha256", tags=[])
    ok(state, op="set_permissions", user="u", vhost="/", configure=".*", write=".*", read=".*")
    ok(state, op="set_permissions", user="u", vhost="other", configure="", write="", read="")
    ok(state, op="set_policy", vhost="/", name="p", pattern=".*", definition={"max-length": 1})
    declare_x(state, "x")
    declare_q(state, "q")
    bind_q(state, "x", "q")
    result = ok(state, op="delete_vhost", name="/")
    assert result["deleted"] is True
    assert "x" in result["exchanges"] and result["queues"] == ["q"]
    for table in (state.vhosts, state.exchanges, state.queues, state.bindings):
        assert "/" not in table
    assert "/" not in state.permissions and "/" not in state.policies
    assert state.list_permissions(user="u") == [state.permission("u", "other")]
    assert refused(state, 404, op="delete_vhost", name="/") == "no vhost '/'"


def test_set_vhost_owner_bumps_the_epoch_and_can_compare_and_set(state: DefinitionState) -> None:
    assert some(state.vhost("/"))["epoch"] == 0
    assert ok(state, op="set_vhost_owner", name="/", owner="n1")["epoch"] == 1
    assert ok(state, op="set_vhost_owner", name="/", owner="n2", expected_epoch=1)["epoch"] == 2
    text = refused(state, 406, op="set_vhost_owner", name="/", owner="n3", expected_epoch=1)
    assert text == "vhost '/' is at epoch 2, expected 1"
    assert some(state.vhost("/"))["owner"] == "n2"
    refused(state, 404, op="set_vhost_owner", name="nope", owner="n1")


def test_in_sync_set_changes_only_through_the_owners_epoch(state: DefinitionState) -> None:
    ok(state, op="add_vhost", name="v", owner="n1", replicas=["n2", "n3", "n1"],
       replication_factor=3)
    v = some(state.vhost("v"))
    assert (v["owner"], v["replicas"], v["in_sync"], v["epoch"]) == ("n1", ["n2", "n3"], [], 1)
    ok(state, op="set_in_sync", name="v", node="n2", in_sync=True, expected_epoch=1)
    ok(state, op="set_in_sync", name="v", node="n3", in_sync=True, expected_epoch=1)
    refused(state, 404, op="set_in_sync", name="v", node="n9", in_sync=True, expected_epoch=1)
    refused(state, 541, op="set_in_sync", name="v", node="n2", in_sync=False)
    assert some(state.vhost("v"))["in_sync"] == ["n2", "n3"]
    ok(state, op="set_in_sync", name="v", node="n3", in_sync=False, expected_epoch=1)
    assert some(state.vhost("v"))["in_sync"] == ["n2"]


def test_failover_promotes_only_an_in_sync_replica_and_keeps_the_old_owner(
        state: DefinitionState) -> None:
    ok(state, op="add_vhost", name="v", owner="n1", replicas=["n2", "n3"])
    ok(state, op="set_in_sync", name="v", node="n2", in_sync=True, expected_epoch=1)
    text = refused(state, 406, op="set_vhost_owner", name="v", owner="n3", expected_epoch=1,
                   require_in_sync=True)
    assert text == "node 'n3' is not an in-sync replica of vhost 'v'"
    result = ok(state, op="set_vhost_owner", name="v", owner="n2", expected_epoch=1,
                require_in_sync=True)
    v = result["vhost"]
    assert (v["owner"], v["epoch"], v["replicas"], v["in_sync"]) == ("n2", 2, ["n3", "n1"], [])
    assert result["previous_owner"] == "n1"
    # a deposed owner's late change is refused by the epoch
    refused(state, 406, op="set_in_sync", name="v", node="n3", in_sync=False, expected_epoch=1)
    # a move that drained everything keeps the old owner in sync
    ok(state, op="set_vhost_owner", name="v", owner="n3", expected_epoch=2,
       old_owner_in_sync=True)
    v = some(state.vhost("v"))
    assert (v["owner"], v["replicas"], v["in_sync"]) == ("n3", ["n1", "n2"], ["n2"])
    # a failover's promoted copy's end is the confirmed mark from then on (a copy still in
    # sync may lack the last confirms until it has caught up)
    ok(state, op="set_vhost_owner", name="v", owner="n2", expected_epoch=3, confirmed=40,
       require_in_sync=True)
    assert some(state.vhost("v"))["confirmed"] == 40
    ok(state, op="set_vhost_owner", name="v", owner="n3", expected_epoch=4, confirmed=30)
    assert some(state.vhost("v"))["confirmed"] == 40  # never goes back


def test_in_sync_changes_of_several_units_commit_in_one_entry_each_fenced(
        state: DefinitionState) -> None:
    """A dead replica leaves every unit its owner runs in one entry; a deposed owner's
    change in it is refused without keeping the others out."""
    for name in ("a", "b", "c"):
        ok(state, op="add_vhost", name=name, owner="n1", replicas=["n2", "n3"])
        for node in ("n2", "n3"):
            ok(state, op="set_in_sync", name=name, node=node, in_sync=True, expected_epoch=1)
    ok(state, op="set_vhost_owner", name="c", owner="n2", expected_epoch=1)  # epoch 2
    results = ok(state, op="set_in_sync_many", changes=[
        {"name": "a", "node": "n3", "in_sync": False, "expected_epoch": 1, "confirmed": 7},
        {"name": "c", "node": "n3", "in_sync": False, "expected_epoch": 1, "confirmed": 9},
        {"name": "b", "node": "n3", "in_sync": False, "expected_epoch": 1, "confirmed": 8},
        "not a change",
    ])["results"]
    assert [r["ok"] for r in results] == [True, False, True, False]
    assert results[1]["code"] == 406
    assert results[3]["text"] == "set_in_sync_many: a change must be a map"
    for name, confirmed in (("a", 7), ("b", 8)):
        v = some(state.vhost(name))
        assert (v["in_sync"], v["confirmed"]) == (["n2"], confirmed)
        assert results[[0, 2][name == "b"]]["vhost"]["in_sync"] == ["n2"]
    assert "n3" in some(state.vhost("c"))["in_sync"]


def test_replicas_follow_membership(state: DefinitionState) -> None:
    ok(state, op="register_node", name="n2", raft="h:2", forward="h:3", amqp="h:4", http="h:5")
    ok(state, op="add_vhost", name="v", owner="n1", replicas=["n2"])
    ok(state, op="set_in_sync", name="v", node="n2", in_sync=True, expected_epoch=1)
    ok(state, op="set_vhost_replicas", name="v", replicas=["n2", "n3"], replication_factor=3)
    v = some(state.vhost("v"))
    assert (v["replicas"], v["in_sync"], v["replication_factor"]) == (["n2", "n3"], ["n2"], 3)
    assert ok(state, op="forget_node", name="n2")["vhosts"] == ["v"]
    v = some(state.vhost("v"))
    assert (v["replicas"], v["in_sync"]) == (["n3"], [])


# ---------------------------------------------------------------- users & permissions


def test_bootstrap_applies_only_once() -> None:
    s = DefinitionState()
    cmd = {
        "op": "bootstrap",
        "vhost": "/",
        "user": "guest",
        "password_hash": b"\x01hash",
        "hashing": "rabbit_password_hashing_sha256",
        "tags": ["administrator"],
    }
    assert s.apply(cmd) == {"ok": True, "applied": True}
    assert s.user("guest") == {
        "name": "guest",
        "password_hash": b"\x01hash",
        "hashing": "rabbit_password_hashing_sha256",
        "tags": ["administrator"],
    }
    assert s.permission("guest", "/") == {
        "user": "guest",
        "vhost": "/",
        "configure": ".*",
        "write": ".*",
        "read": ".*",
    }
    ok(s, op="delete_user", name="guest")
    assert s.apply(cmd) == {"ok": True, "applied": False}
    assert s.user("guest") is None
    assert s.snapshot()["bootstrapped"] is True


def test_user_lifecycle(state: DefinitionState) -> None:
    assert ok(state, op="add_user", name="u", password_hash="h1", hashing="sha256", tags=[])[
        "created"
    ]
    again = ok(state, op="add_user", name="u", password_hash="h2", hashing="md5", tags=["x"])
    assert again["created"] is False
    assert some(state.user("u"))["password_hash"] == "h2"
    ok(state, op="change_password", name="u", password_hash="h3", hashing="sha512")
    ok(state, op="set_user_tags", name="u", tags=["administrator", "monitoring"])
    assert state.user("u") == {
        "name": "u",
        "password_hash": "h3",
        "hashing": "sha512",
        "tags": ["administrator", "monitoring"],
    }
    assert [u["name"] for u in state.list_users()] == ["u"]
    ok(state, op="set_permissions", user="u", vhost="/", configure="^a", write="^b", read="^c")
    ok(state, op="delete_user", name="u")
    assert state.user("u") is None and state.permission("u", "/") is None
    assert refused(state, 404, op="delete_user", name="u") == "no user 'u'"
    refused(state, 404, op="change_password", name="u", password_hash="h", hashing="x")
    refused(state, 404, op="set_user_tags", name="u", tags=[])


def test_permissions(state: DefinitionState) -> None:
    ok(state, op="add_user", name="u", password_hash="h", hashing="sha256", tags=[])
    perms = {"configure": "^amq\\.gen", "write": ".*", "read": ""}
    assert ok(state, op="set_permissions", user="u", vhost="/", **perms)["created"] is True
    assert ok(state, op="set_permissions", user="u", vhost="/", **perms)["created"] is False
    assert state.permission("u", "/") == {"user": "u", "vhost": "/", **perms}
    assert refused(state, 404, op="set_permissions", user="u", vhost="v", **perms) == (
        "no vhost 'v'"
    )
    assert refused(state, 404, op="set_permissions", user="w", vhost="/", **perms) == (
        "no user 'w'"
    )
    assert ok(state, op="clear_permissions", user="u", vhost="/")["deleted"] is True
    assert ok(state, op="clear_permissions", user="u", vhost="/")["deleted"] is False
    assert ok(state, op="clear_permissions", user="u", vhost="nope")["deleted"] is False


# ---------------------------------------------------------------- policies


def test_policies(state: DefinitionState) -> None:
    definition: dict[str, Any] = {
        "max-length": 10,
        "dead-letter-exchange": "dlx",
        "nested": {"a": [1, 2]},
    }
    result = ok(
        state,
        op="set_policy",
        vhost="/",
        name="p",
        pattern="^q",
        definition=definition,
        priority=5,
        apply_to="queues",
    )
    assert result["created"] is True
    assert result["policy"] == {
        "vhost": "/",
        "name": "p",
        "pattern": "^q",
        "definition": definition,
        "priority": 5,
        "apply_to": "queues",
    }
    definition["nested"]["a"].append(3)  # the state holds its own copy
    assert some(state.policy("/", "p"))["definition"]["nested"] == {"a": [1, 2]}
    assert (
        ok(state, op="set_policy", vhost="/", name="p", pattern="x", definition={})["created"]
        is False
    )
    assert some(state.policy("/", "p"))["apply_to"] == "all"
    refused(state, 404, op="set_policy", vhost="v", name="p", pattern="x", definition={})
    assert ok(state, op="clear_policy", vhost="/", name="p")["deleted"] is True
    assert ok(state, op="clear_policy", vhost="/", name="p")["deleted"] is False
    assert state.list_policies() == []


# ---------------------------------------------------------------- exchanges


def test_declare_exchange_creates_once_and_returns_the_stored_definition(
    state: DefinitionState,
) -> None:
    first = declare_x(state, "x", type="topic", arguments=ARGS)
    assert first["created"] is True
    assert first["exchange"] == {
        "vhost": "/",
        "name": "x",
        "type": "topic",
        "durable": True,
        "auto_delete": False,
        "internal": False,
        "arguments": ARGS,
    }
    second = declare_x(state, "x", type="fanout", durable=False)
    assert second == {"ok": True, "created": False, "exchange": first["exchange"]}
    assert declare_x(state, "amq.direct")["created"] is False
    text = refused(
        state, 403, op="declare_exchange", vhost="/", name="amq.foo", type="direct", durable=True
    )
    assert text == "exchange name 'amq.foo' contains reserved prefix 'amq.*'"
    assert refused(
        state, 404, op="declare_exchange", vhost="v", name="x", type="direct", durable=True
    ) == ("no vhost 'v'")


def test_delete_exchange(state: DefinitionState) -> None:
    declare_x(state, "x")
    declare_x(state, "y")
    declare_q(state, "q")
    bind_q(state, "x", "q", "k")
    ok(
        state,
        op="bind",
        vhost="/",
        source="y",
        destination="x",
        destination_type="exchange",
        routing_key="",
        arguments=EMPTY_ARGUMENTS,
    )
    text = refused(state, 406, op="delete_exchange", vhost="/", name="x", if_unused=True)
    assert text == "exchange 'x' in vhost '/' in use"
    # y has x as a destination only: if_unused looks at bindings where it is the source
    result = ok(state, op="delete_exchange", vhost="/", name="x", if_unused=False)
    assert result["deleted"] is True
    assert {(b["source"], b["destination"]) for b in result["bindings"]} == {
        ("x", "q"),
        ("y", "x"),
    }
    assert state.list_bindings("/") == []
    assert ok(state, op="delete_exchange", vhost="/", name="y", if_unused=True)["deleted"]
    assert ok(state, op="delete_exchange", vhost="/", name="x")["deleted"] is False
    assert ok(state, op="delete_exchange", vhost="nope", name="x")["deleted"] is False
    assert refused(state, 403, op="delete_exchange", vhost="/", name="") == (
        "operation not permitted on the default exchange"
    )
    assert refused(state, 403, op="delete_exchange", vhost="/", name="amq.topic") == (
        "deletion of system exchange 'amq.topic' in vhost '/' not allowed"
    )


def test_auto_delete_exchange_goes_with_its_last_binding(state: DefinitionState) -> None:
    declare_x(state, "ad", auto_delete=True)
    declare_x(state, "ad2", auto_delete=True)
    declare_q(state, "q1")
    declare_q(state, "q2")
    assert declare_x(state, "ad")["created"] is False  # no bindings yet: still there
    bind_q(state, "ad", "q1")
    bind_q(state, "ad", "q2")
    ok(
        state,
        op="bind",
        vhost="/",
        source="ad2",
        destination="ad",
        destination_type="exchange",
        routing_key="",
    )
    result = ok(state, op="delete_queue", vhost="/", name="q1")
    assert result["auto_deleted_exchanges"] == []
    result = ok(
        state,
        op="unbind",
        vhost="/",
        source="ad",
        destination="q2",
        destination_type="queue",
        routing_key="",
        arguments=EMPTY_ARGUMENTS,
    )
    # ad lost its last source binding; deleting it removed ad2's only binding: cascade
    assert result["deleted"] is True
    assert result["auto_deleted_exchanges"] == ["ad", "ad2"]
    assert state.exchange("/", "ad") is None and state.exchange("/", "ad2") is None
    assert state.list_bindings() == []


def test_auto_delete_exchange_kept_while_the_owner_has_transient_bindings(
    state: DefinitionState,
) -> None:
    # RabbitMQ keeps an auto-delete exchange while any binding is left; bindings to
    # transient queues never reach Raft, so the owner names those exchanges
    declare_x(state, "ad", auto_delete=True)
    declare_q(state, "q1")
    declare_q(state, "q2")
    bind_q(state, "ad", "q1")
    bind_q(state, "ad", "q2")
    unbind = {"op": "unbind", "vhost": "/", "source": "ad", "destination_type": "queue",
              "routing_key": "", "arguments": EMPTY_ARGUMENTS}
    result = ok(state, **unbind, destination="q1", keep_exchanges=["ad"])
    assert result["auto_deleted_exchanges"] == [] and state.exchange("/", "ad") is not None
    result = ok(state, op="delete_queue", vhost="/", name="q2", keep_exchanges=["ad"])
    assert result["auto_deleted_exchanges"] == [] and state.exchange("/", "ad") is not None
    bind_q(state, "ad", "q1")
    result = ok(state, **unbind, destination="q1")
    assert result["auto_deleted_exchanges"] == ["ad"]


# ---------------------------------------------------------------- queues


def test_a_queue_keeps_the_id_of_the_declaration_that_created_it(
        state: DefinitionState) -> None:
    assert declare_q(state, "q", id="first")["queue"]["id"] == "first"
    assert declare_q(state, "q", id="second")["queue"]["id"] == "first"  # it existed
    ok(state, op="delete_queue", vhost="/", name="q")
    assert declare_q(state, "q", id="second")["queue"]["id"] == "second"
    refused(state, 541, op="declare_queue", vhost="/", name="r", durable=True, id=7)


def test_queues(state: DefinitionState) -> None:
    first = declare_q(state, "q", arguments=ARGS)
    assert first["created"] is True
    assert first["queue"] == {
        "vhost": "/",
        "name": "q",
        "durable": True,
        "auto_delete": False,
        "exclusive": False,
        "arguments": ARGS,
        "id": "",
    }
    assert declare_q(state, "q", durable=False)["queue"] == first["queue"]
    declare_q(state, "amq.gen-abc")  # server-named non-exclusive queues are replicated too
    refused(state, 541, op="declare_queue", vhost="/", name="e", durable=True, exclusive=True)
    refused(state, 404, op="declare_queue", vhost="v", name="q", durable=True)
    bind_q(state, "amq.direct", "q", "k")
    result = ok(state, op="delete_queue", vhost="/", name="q")
    assert result["deleted"] is True and len(result["bindings"]) == 1
    assert state.list_bindings("/") == []
    assert ok(state, op="delete_queue", vhost="/", name="q")["deleted"] is False
    assert [q["name"] for q in state.list_queues()] == ["amq.gen-abc"]


# ---------------------------------------------------------------- bindings


def test_bind_and_unbind(state: DefinitionState) -> None:
    declare_x(state, "x", type="topic")
    declare_q(state, "q")
    first = bind_q(state, "x", "q", "a.*", arguments=ARGS)
    assert first["created"] is True
    assert first["binding"] == {
        "vhost": "/",
        "source": "x",
        "destination": "q",
        "destination_type": "queue",
        "routing_key": "a.*",
        "arguments": ARGS,
    }
    assert bind_q(state, "x", "q", "a.*", arguments=ARGS)["created"] is False
    bind_q(state, "x", "q", "a.*")  # other arguments: another binding
    bind_q(state, "x", "q", "b.#", arguments=ARGS)
    assert len(state.list_bindings("/")) == 3
    key = binding_key("x", "queue", "q", "a.*", ARGS)
    assert state.bindings["/"][key] == first["binding"]

    base = {"op": "bind", "vhost": "/", "routing_key": "", "arguments": EMPTY_ARGUMENTS}
    texts = [
        refused(state, 404, **{**base, "source": "nx", "destination": "q",
                               "destination_type": "queue"}),
        refused(state, 404, **{**base, "source": "x", "destination": "nq",
                               "destination_type": "queue"}),
        refused(state, 404, **{**base, "source": "x", "destination": "ny",
                               "destination_type": "exchange"}),
        refused(state, 404, **{**base, "vhost": "v", "source": "x", "destination": "q",
                               "destination_type": "queue"}),
        refused(state, 403, **{**base, "source": "", "destination": "q",
                               "destination_type": "queue"}),
        refused(state, 541, **{**base, "source": "x", "destination": "q",
                               "destination_type": "stream"}),
    ]  # fmt: skip
    assert texts[:4] == [
        "no exchange 'nx' in vhost '/'",
        "no queue 'nq' in vhost '/'",
        "no exchange 'ny' in vhost '/'",
        "no vhost 'v'",
    ]
    assert texts[4] == "operation not permitted on the default exchange"

    unbind = {
        "op": "unbind",
        "vhost": "/",
        "source": "x",
        "destination": "q",
        "destination_type": "queue",
        "routing_key": "a.*",
        "arguments": ARGS,
    }
    result = ok(state, **unbind)
    assert result["deleted"] is True and result["bindings"] == [first["binding"]]
    assert ok(state, **unbind)["deleted"] is False
    assert ok(state, **{**unbind, "vhost": "nope"})["deleted"] is False
    assert len(state.list_bindings("/")) == 2


def test_exchange_to_exchange_binding(state: DefinitionState) -> None:
    declare_x(state, "a")
    declare_x(state, "b")
    result = ok(
        state,
        op="bind",
        vhost="/",
        source="a",
        destination="b",
        destination_type="exchange",
        routing_key="k",
    )
    assert result["binding"]["arguments"] == EMPTY_ARGUMENTS
    assert ok(state, op="delete_exchange", vhost="/", name="b")["bindings"] == [result["binding"]]


# ---------------------------------------------------------------- malformed commands


@pytest.mark.parametrize(
    ("command", "text"),
    [
        ({"op": "frobnicate"}, "unknown definition command 'frobnicate'"),
        ({}, "unknown definition command None"),
        ({"op": 3}, "unknown definition command 3"),
        ({"op": "add_vhost"}, "definition command 'add_vhost' lacks field 'name'"),
        (
            {"op": "add_vhost", "name": b"/"},
            "definition command 'add_vhost': field 'name' must be str, got bytes",
        ),
        (
            {"op": "declare_queue", "vhost": "/", "name": "q", "durable": 1},
            "definition command 'declare_queue': field 'durable' must be bool, got int",
        ),
        (
            {"op": "set_policy", "vhost": "/", "name": "p", "pattern": "", "definition": {},
             "priority": True},
            "definition command 'set_policy': field 'priority' must be int, got bool",
        ),
        (
            {"op": "declare_queue", "vhost": "/", "name": "q", "durable": True,
             "arguments": "not bytes"},
            "definition command 'declare_queue': field 'arguments' must be bytes, got str",
        ),
        (
            {"op": "set_user_tags", "name": "u", "tags": ["a", 1]},
            "definition command 'set_user_tags': field 'tags' must be a list of str",
        ),
    ],
)  # fmt: skip
def test_malformed_commands_are_refused_not_raised(
    state: DefinitionState, command: dict[str, Any], text: str
) -> None:
    assert refused(state, 541, **command) == text


@pytest.mark.parametrize("command", [None, [], "add_vhost", 42, b"\x00"])
def test_non_map_commands_are_refused(command: Any) -> None:
    result = DefinitionState().apply(command)
    assert result["ok"] is False and result["code"] == 541


def test_barrier_changes_nothing(state: DefinitionState) -> None:
    before = state.snapshot()
    assert state.apply({"op": "barrier"}) == {"ok": True}
    assert state.snapshot() == before


def test_results_never_alias_the_state(state: DefinitionState) -> None:
    result = declare_x(state, "x")
    result["exchange"]["type"] = "mutated"
    some(state.vhost("/"))["tags"].append("mutated")
    assert some(state.exchange("/", "x"))["type"] == "direct"
    assert some(state.vhost("/"))["tags"] == []


# ---------------------------------------------------------------- snapshots & replay


def history() -> list[dict[str, Any]]:
    """A mixed sequence of commands, some refused, touching every op."""
    return [
        {"op": "bootstrap", "vhost": "/", "user": "guest", "password_hash": b"h",
         "hashing": "sha256", "tags": ["administrator"]},
        {"op": "add_vhost", "name": "v2", "description": "second", "tags": ["t"]},
        {"op": "add_user", "name": "alice", "password_hash": "a", "hashing": "sha256",
         "tags": []},
        {"op": "set_permissions", "user": "alice", "vhost": "v2", "configure": ".*",
         "write": ".*", "read": ".*"},
        {"op": "change_password", "name": "alice", "password_hash": "b", "hashing": "sha512"},
        {"op": "set_user_tags", "name": "alice", "tags": ["monitoring"]},
        {"op": "set_policy", "vhost": "/", "name": "ttl", "pattern": ".*",
         "definition": {"message-ttl": 1000}, "priority": 1, "apply_to": "queues"},
        {"op": "declare_exchange", "vhost": "/", "name": "x", "type": "topic",
         "durable": True, "auto_delete": False, "internal": False, "arguments": ARGS},
        {"op": "declare_queue", "vhost": "/", "name": "q", "durable": True,
         "auto_delete": False, "exclusive": False, "arguments": ARGS},
        {"op": "bind", "vhost": "/", "source": "x", "destination": "q",
         "destination_type": "queue", "routing_key": "#", "arguments": ARGS},
        {"op": "bind", "vhost": "/", "source": "nope", "destination": "q",
         "destination_type": "queue", "routing_key": "#", "arguments": ARGS},
        {"op": "set_vhost_owner", "name": "v2", "owner": "node-b"},
        {"op": "declare_queue", "vhost": "v2", "name": "q2", "durable": True},
        {"op": "bind", "vhost": "v2", "source": "amq.fanout", "destination": "q2",
         "destination_type": "queue", "routing_key": ""},
        {"op": "unbind", "vhost": "/", "source": "x", "destination": "q",
         "destination_type": "queue", "routing_key": "#", "arguments": ARGS},
        {"op": "delete_queue", "vhost": "v2", "name": "q2"},
        {"op": "clear_policy", "vhost": "/", "name": "ttl"},
        {"op": "clear_permissions", "user": "alice", "vhost": "v2"},
        {"op": "delete_exchange", "vhost": "/", "name": "x", "if_unused": True},
        {"op": "delete_user", "name": "alice"},
        {"op": "delete_vhost", "name": "v2"},
        {"op": "no-such-op"},
    ]  # fmt: skip


def test_snapshot_round_trips_through_msgpack() -> None:
    s = DefinitionState()
    for command in history()[:14]:
        s.apply(command)
    snap = s.snapshot()
    wire = msgpack.packb(snap, use_bin_type=True)
    restored = DefinitionState.from_snapshot(msgpack.unpackb(wire, raw=False))
    assert restored.snapshot() == snap
    assert some(restored.queue("/", "q"))["arguments"] == ARGS  # bytes stay bytes
    # the restored state is independent of the snapshot it came from
    snap["vhosts"]["/"]["tags"].append("x")
    assert some(restored.vhost("/"))["tags"] == []
    # and it keeps working the same way
    for command in history()[14:]:
        assert restored.apply(command) == s.apply(command)
    assert restored.snapshot() == s.snapshot()


def test_dumps_and_loads_are_msgpack_snapshots() -> None:
    s = DefinitionState()
    for command in history():
        s.apply(command)
    blob = s.dumps()
    assert msgpack.unpackb(blob, raw=False) == s.snapshot()
    assert DefinitionState.loads(blob).snapshot() == s.snapshot()


def test_from_snapshot_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="unsupported definitions snapshot format"):
        DefinitionState.from_snapshot({"format": 99})
    with pytest.raises(ValueError, match="unsupported definitions snapshot format"):
        DefinitionState.loads(msgpack.packb([1, 2]))


def test_replay_is_deterministic() -> None:
    # Every command as it would come off the Raft journal: msgpack-decoded.
    commands = [msgpack.unpackb(msgpack.packb(c), raw=False) for c in history()]
    runs = []
    for _ in range(2):
        s = DefinitionState()
        results = [s.apply(c) for c in commands]
        runs.append((results, msgpack.packb(s.snapshot())))
    assert runs[0] == runs[1]  # same results, byte-identical state (order included)
    results = runs[0][0]
    assert results[10]["ok"] is False and results[10]["code"] == 404
    assert results[-1]["code"] == 541
    assert all(r["ok"] for r in results[:10])


def test_replay_from_a_snapshot_in_the_middle_gives_the_same_state() -> None:
    commands = history()
    whole = DefinitionState()
    for c in commands:
        whole.apply(c)
    for cut in range(len(commands) + 1):
        first = DefinitionState()
        for c in commands[:cut]:
            first.apply(c)
        resumed = DefinitionState.from_snapshot(first.snapshot())
        for c in commands[cut:]:
            resumed.apply(c)
        assert resumed.snapshot() == whole.snapshot(), cut
