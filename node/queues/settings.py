"""A queue's effective settings: its x-arguments merged with the policy that applies to it,
the way RabbitMQ merges them (docs/parameters: for numeric limits the smaller of the two
wins, for everything else the queue argument wins over the policy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from node.queues import types

OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")

# argument name -> policy key
_POLICY_KEYS = {
    "x-message-ttl": "message-ttl",
    "x-expires": "expires",
    "x-max-length": "max-length",
    "x-max-length-bytes": "max-length-bytes",
    "x-overflow": "overflow",
    "x-dead-letter-exchange": "dead-letter-exchange",
    "x-dead-letter-routing-key": "dead-letter-routing-key",
}
_MIN_WINS = ("x-message-ttl", "x-expires", "x-max-length", "x-max-length-bytes")


def _text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", "replace")
    return str(v)


def _int(v: Any) -> int | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


@dataclass
class QueueSettings:
    message_ttl: int | None = None  # ms
    expires: int | None = None  # ms of disuse before the queue is deleted
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str = "drop-head"
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    max_priority: int | None = None  # argument only, not settable by policy
    single_active_consumer: bool = False  # argument only
    queue_type: str = types.CLASSIC  # argument only (or the vhost's default)
    delivery_limit: int | None = None  # quorum queues: returns before a dead-letter

    def __post_init__(self) -> None:
        # read on every publish: a plain attribute, not a property
        self.has_limit = self.max_length is not None or self.max_length_bytes is not None


def merged_arguments(args: dict, policy: dict | None) -> dict:
    """Queue arguments with the policy's keys folded in (as x- names)."""
    out = dict(args)
    quorum = types.queue_type(args) == types.QUORUM
    for arg, key in _POLICY_KEYS.items():
        if policy is None or key not in policy:
            continue
        pv = policy[key]
        if arg not in out or (quorum and arg == "x-overflow"):
            # a quorum queue's overflow: the policy wins (rabbit_quorum_queue,
            # policy_has_precedence)
            out[arg] = pv
        elif arg in _MIN_WINS:
            a, b = _int(out[arg]), _int(pv)
            if a is not None and b is not None:
                out[arg] = min(a, b)
    return out


def queue_settings(args: dict, policy: dict | None = None) -> QueueSettings:
    m = merged_arguments(args, policy)
    qtype = types.queue_type(args)
    overflow = _text(m.get("x-overflow")) or "drop-head"
    if overflow not in OVERFLOW_MODES or (qtype == types.QUORUM
                                          and overflow == "reject-publish-dlx"):
        # a quorum queue takes reject-publish-dlx and acts as drop-head (4.0 logs a warning)
        overflow = "drop-head"
    prio = _int(args.get("x-max-priority")) if qtype == types.CLASSIC else None
    limit = None
    if qtype == types.QUORUM:
        limit = types.delivery_limit(args.get("x-delivery-limit"),
                                     (policy or {}).get("delivery-limit"))
    return QueueSettings(
        message_ttl=_int(m.get("x-message-ttl")),
        expires=_int(m.get("x-expires")),
        max_length=_int(m.get("x-max-length")),
        max_length_bytes=_int(m.get("x-max-length-bytes")),
        overflow=overflow,
        dead_letter_exchange=_text(m.get("x-dead-letter-exchange")),
        dead_letter_routing_key=_text(m.get("x-dead-letter-routing-key")),
        max_priority=min(prio, 255) if prio and prio > 0 else None,
        single_active_consumer=bool(args.get("x-single-active-consumer")),
        queue_type=qtype,
        delivery_limit=limit,
    )
