"""Rewrite a message for dead-lettering, as RabbitMQ does (docs/dlx):

* the `x-death` header gets an entry per {queue, reason}, most recent first: `count`,
  `reason`, `queue`, `time` (of the first death), `exchange`, `routing-keys` (the routing key
  and CC, never BCC), and `original-expiration` when the message had a per-message TTL;
* `x-first-death-{queue,reason,exchange}` are set once, `x-last-death-*` every time;
* the `expiration` property is removed (it must not expire again), BCC is removed, and when
  a dead-letter routing key replaces the routing key, CC goes too."""

from __future__ import annotations

import copy

from node.amqp.fields import Timestamp
from node.amqp.message import Message


def _keys(v: object) -> list[str]:
    if isinstance(v, (list, tuple)):
        return [x.decode("utf-8", "replace") if isinstance(x, (bytes, bytearray)) else str(x)
                for x in v]
    return []


def dead_lettered(message: Message, queue: str, reason: str, dlx: str,
                  dlrk: str | None, now_s: int) -> Message:
    props = copy.copy(message.properties)
    headers = dict(props.headers or {})
    routing_keys = [message.routing_key] + _keys(headers.get("CC"))
    raw = headers.get("x-death")
    # a client may have put anything here: only a list of tables counts
    deaths = [d for d in raw if isinstance(d, dict)] if isinstance(raw, list) else []
    count = 1
    first_time = Timestamp(now_s)
    for i, d in enumerate(deaths):
        if d.get("queue") == queue and d.get("reason") == reason:
            try:
                count = int(d.get("count", 0)) + 1
            except (TypeError, ValueError):
                count = 1
            first_time = d.get("time", first_time)
            del deaths[i]
            break
    entry: dict = {"count": count, "reason": reason, "queue": queue, "time": first_time,
                   "exchange": message.exchange, "routing-keys": routing_keys}
    if props.expiration is not None:
        entry["original-expiration"] = props.expiration
    headers["x-death"] = [entry] + deaths
    if "x-first-death-reason" not in headers:
        headers["x-first-death-reason"] = reason
        headers["x-first-death-queue"] = queue
        headers["x-first-death-exchange"] = message.exchange
    headers["x-last-death-reason"] = reason
    headers["x-last-death-queue"] = queue
    headers["x-last-death-exchange"] = message.exchange
    headers.pop("BCC", None)
    if dlrk is not None:
        headers.pop("CC", None)
    props.headers = headers
    props.expiration = None
    return message.with_properties(props, exchange=dlx,
                                   routing_key=dlrk if dlrk is not None else message.routing_key)


def death_cycle(message: Message, target_queue: str) -> bool:
    """True when dead-lettering into `target_queue` closes a cycle with no rejection in it:
    RabbitMQ drops such messages instead of letting them loop forever."""
    deaths = message.headers.get("x-death")
    if not isinstance(deaths, list):
        return False
    # most recent first: a cycle is a path back to the target with no rejection on it
    for d in deaths:
        if not isinstance(d, dict):
            continue
        if d.get("reason") == "rejected":
            return False
        if d.get("queue") == target_queue:
            return True
    return False
