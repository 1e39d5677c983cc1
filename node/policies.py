"""Which policy applies to a queue or exchange: the highest-priority policy of the vhost
whose pattern matches the name and whose apply-to covers the kind (RabbitMQ's rule; ties
go to the name that sorts first, so every node picks the same one)."""

from __future__ import annotations

import re
from functools import lru_cache

_APPLIES = {
    "queue": ("all", "queues", "classic_queues", "quorum_queues"),
    "exchange": ("all", "exchanges"),
}


@lru_cache(maxsize=1024)
def _rx(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None


def matching_policy(policies: dict[str, dict], kind: str, name: str,
                    queue_type: str | None = None) -> dict | None:
    """The policy for the queue or exchange `name` (`kind` "queue" or "exchange").  The one
    implementation: the broker applies what this returns and the management API shows it.
    Given a queue's type, apply-to classic_queues and quorum_queues cover only that type."""
    best = None
    best_key: tuple[int, str] | None = None
    for p in policies.values():
        apply_to = p.get("apply_to", "all")
        if apply_to not in _APPLIES[kind] or (
                queue_type is not None and apply_to.endswith("_queues")
                and apply_to != f"{queue_type}_queues"):
            continue
        rx = _rx(str(p.get("pattern", "")))
        if rx is None or not rx.search(name):
            continue
        key = (-int(p.get("priority") or 0), str(p.get("name", "")))  # smallest wins
        if best_key is None or key < best_key:
            best, best_key = p, key
    return best
