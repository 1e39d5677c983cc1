"""What the health checks look at (node/health.py), on stand-ins for the broker."""

from __future__ import annotations

from types import SimpleNamespace

from node import health


class Store:
    def __init__(self, problem: str | None) -> None:
        self._problem = problem

    def problem(self) -> str | None:
        return self._problem


def broker(leader: str | None = "a:1", stores: dict | None = None, owned=("/", "orders"),
           diverged: dict | None = None):
    stores = {"/": Store(None), "orders": Store(None)} if stores is None else stores
    status = {"started": True, "leader": leader, "self": "a:1", "has_quorum": True,
              "partners": {"b:1": "connected", "c:1": "disconnected"}}
    checks = {"checks": 3, "agreed": 2, "diverged": diverged}
    return SimpleNamespace(
        metadata=SimpleNamespace(status=lambda: status, digest_status=lambda: checks),
        runtime=SimpleNamespace(
            units={name: {} for name in ("/", "orders", "elsewhere")},
            owns=lambda name: name in owned,
            vhosts={name: SimpleNamespace(unit_stores={name: s} if s is not None else {})
                    for name, s in stores.items()}))


class Server:
    def __init__(self, serving: bool) -> None:
        self.serving = serving
        self.sockets = [object()] if serving else []

    def is_serving(self) -> bool:
        return self.serving


def test_all_well():
    assert health.readiness_problems(broker(), {"AMQP": Server(True)}) == []


def test_each_problem_is_named():
    b = broker(leader=None, stores={"/": Store("writer thread not running")})
    assert health.readiness_problems(b, {"AMQP": Server(False), "forwarding": None}) == [
        "AMQP listener is not accepting connections",
        "this node knows no Raft leader",
        "vhost '/': writer thread not running",
        "vhost 'orders' is not running",
    ]


def test_a_leader_counts_only_when_reachable():
    assert health.raft_problem(broker(leader="b:1")) is None
    assert health.raft_problem(broker(leader="c:1")) == (
        "the Raft leader c:1 cannot be reached from this node")


def test_vhosts_owned_elsewhere_are_not_this_nodes_to_check():
    assert health.vhost_problems(broker(stores={}, owned=())) == []


def test_token_round_trip(tmp_path):
    token = health.write_token(str(tmp_path))
    assert health.read_token(str(tmp_path)) == token
    assert health.token_matches(token, f"Bearer {token}")
    assert not health.token_matches(token, f"Basic {token}")
    assert not health.token_matches(None, f"Bearer {token}")


def test_definitions_that_diverged_from_the_leader_fail_readiness():
    b = broker(diverged={"mark": "b:1/3/1", "leader": "b:1", "leader_digest": "x",
                         "digest": "y"})
    assert health.readiness_problems(b, {"AMQP": Server(True)}) == [
        "this node's definitions diverged from the Raft leader b:1 (digest check b:1/3/1): "
        "its owners and epochs cannot be trusted"]
