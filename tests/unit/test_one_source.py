"""One source of truth each for policy matching, the standard exchanges
and the AMQP reply codes."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import cluster.definitions as definitions
from node.amqp import spec
from node.http import rabbitmq_json
from node.policies import matching_policy
from node.runtime.records import Records
from node.vhost import VirtualHost

REPO = Path(__file__).resolve().parents[2]


def _policy(name: str, pattern: str = ".*", priority: int = 0, apply_to: str = "all") -> dict:
    return {"vhost": "/", "name": name, "pattern": pattern, "definition": {"max-length": 1},
            "priority": priority, "apply_to": apply_to}


def test_policy_ties_go_to_the_name_that_sorts_first() -> None:
    # "a" sorts before "ab": the documented rule, whatever the insertion order
    for order in (["ab", "a"], ["a", "ab"]):
        policies = {n: _policy(n, priority=1) for n in order}
        assert matching_policy(policies, "queue", "jobs")["name"] == "a"
    policies = {"low": _policy("low", priority=0), "high": _policy("high", priority=5)}
    assert matching_policy(policies, "queue", "jobs")["name"] == "high"


def test_the_api_shows_the_policy_the_broker_applies() -> None:
    cases = [
        {"b": _policy("b", priority=2), "a": _policy("a", priority=2)},
        {"qq": _policy("qq", apply_to="quorum_queues")},
        {"x": _policy("x", apply_to="exchanges"), "q": _policy("q", apply_to="queues")},
        {"z": _policy("z", "^jo"), "y": _policy("y", "bs$", priority=1)},
    ]
    for policies in cases:
        tables = SimpleNamespace(vhost_defs={}, nodes={}, users={}, permissions={},
                                 policies={"/": policies})
        broker = SimpleNamespace(runtime=SimpleNamespace(records=Records(tables)))
        for kind in ("queue", "exchange"):
            want = matching_policy(policies, kind, "jobs")
            got = rabbitmq_json.matching_policy(broker, "/", "jobs", kind + "s")
            assert (got and got.name, got and dict(got.definition)) == \
                (want and want["name"], want and want["definition"]), (policies, kind)


def test_every_vhost_has_the_standard_exchanges_raft_has() -> None:
    vh = VirtualHost("v", None)
    runtime = {n: (x.type_name, x.internal) for n, x in vh.exchanges.items()}
    assert runtime == definitions.DEFAULT_EXCHANGES


def test_reply_codes_come_from_the_spec() -> None:
    # cluster/ may not import node/: its four refusal codes are pinned to the spec here
    for name in ("ACCESS_REFUSED", "NOT_FOUND", "PRECONDITION_FAILED", "INTERNAL_ERROR"):
        assert getattr(definitions, name) == getattr(spec, name)
    codes = set(spec.REPLY_TEXTS)
    names = set(spec.REPLY_TEXTS.values())
    offenders = []
    for path in sorted((REPO / "node").rglob("*.py")) + sorted((REPO / "storage").rglob("*.py")):
        if path.name in ("spec.py", "codegen.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                    and node.value.value in codes:
                for target in node.targets:
                    label = getattr(target, "id", getattr(target, "attr", ""))
                    if label in names or label == "reply_code":
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {label}")
    assert not offenders, offenders
