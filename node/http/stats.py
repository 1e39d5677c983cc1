"""Live figures for the management plane: counters read from the runtime objects, turned into
per-second rates by a sampler task that runs every `collect_statistics_interval` (5 s, as in
RabbitMQ).  The hot path only ever increments integers; all arithmetic happens here, off it.

Totals never go backwards: counters of deleted queues and exchanges are kept by their vhost
(`VirtualHost.retired_stats`), and those of a deleted vhost by the sampler."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger("warren.http.stats")

Key = tuple  # ("queue", vhost, name), ("exchange", vhost, name), ("channel", conn, n), …
NODE: Key = ("node",)

# message_stats field -> runtime counter, per kind of object
QUEUE_COUNTERS = {"publish": "stats_publish", "deliver_get": "stats_deliver",
                  "ack": "stats_ack", "redeliver": "stats_redeliver"}
EXCHANGE_COUNTERS = {"publish_in": "stats_publish_in", "publish_out": "stats_publish_out"}
CHANNEL_COUNTERS = {"publish": "stats_publish", "deliver_get": "stats_deliver",
                    "ack": "stats_ack"}


def queue_counters(q: Any) -> dict[str, int]:
    return {k: getattr(q, attr, 0) for k, attr in QUEUE_COUNTERS.items()}


def exchange_counters(ex: Any) -> dict[str, int]:
    return {k: getattr(ex, attr, 0) for k, attr in EXCHANGE_COUNTERS.items()}


def channel_counters(ch: Any) -> dict[str, int]:
    return {k: getattr(ch, attr, 0) for k, attr in CHANNEL_COUNTERS.items()}


def vhost_counters(vh: Any) -> dict[str, int]:
    """Everything the vhost's queues and exchanges ever counted, deleted ones included."""
    retired = getattr(vh, "retired_stats", {})
    out = {k: retired.get(attr, 0) for k, attr in QUEUE_COUNTERS.items()}
    for q in vh.queues.values():
        for k, attr in QUEUE_COUNTERS.items():
            out[k] += getattr(q, attr, 0)
    # a vhost's "publish" is what publishers sent into its exchanges
    out["publish"] = retired.get("stats_publish_in", 0) + sum(
        getattr(ex, "stats_publish_in", 0) for ex in vh.exchanges.values())
    return out


def queue_depths(queues: Any) -> dict[str, int]:
    ready = unacked = 0
    for q in queues:
        ready += q.message_count
        unacked += q.unacked
    return {"messages": ready + unacked, "messages_ready": ready,
            "messages_unacknowledged": unacked}


class Sampler:
    """Keeps the last two readings of every object's counters and the rates between them."""

    def __init__(self, broker: Any, interval: float) -> None:
        self.broker = broker
        self.interval = max(0.05, interval)
        self._last: dict[Key, tuple[float, dict[str, int]]] = {}
        self._rates: dict[Key, dict[str, float]] = {}
        # wall time of the last sample whose counters differed from the one before, and
        # whether the latest sample saw no change (idle_since: shown only while idle)
        self._active_at: dict[Key, float] = {}
        self._idle: set[Key] = set()
        self._retired_node: dict[str, int] = {}  # counters of deleted vhosts
        self._last_vhosts: dict[str, dict[str, int]] = {}
        self._task: asyncio.Task | None = None
        # (time, publish rate, deliver_get rate, ack rate, messages, ready, unacked): the UI's
        # overview charts, as RabbitMQ's "last minute / ten minutes" samples
        self.history: list[dict[str, float]] = []
        self.history_len = 120

    # --- the task ------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self.sample()
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.sample()
            except Exception:  # a sampler that dies would freeze every rate at its last value
                log.exception("statistics sample failed")

    # --- readings -------------------------------------------------------------------
    def node_counters(self) -> dict[str, int]:
        b = self.broker
        out = dict.fromkeys(("deliver_get", "ack", "redeliver"), 0)
        for k in out:
            out[k] = self._retired_node.get(k, 0)
        for vh in b.runtime.vhosts.values():
            c = vhost_counters(vh)
            for k in out:
                out[k] += c[k]
        returned = b.counters.returned
        out.update(publish=b.counters.published, confirm=b.counters.confirmed,
                   return_unroutable=returned,
                   drop_unroutable=max(0, b.counters.unroutable - returned),
                   routed=b.counters.published - b.counters.unroutable)
        return out

    def _observe(self, key: Key, now: float, counters: dict[str, int],
                 seen: set[Key]) -> None:
        seen.add(key)
        prev = self._last.get(key)
        if prev is None or any(prev[1].get(k) != v for k, v in counters.items()):
            self._active_at[key] = time.time()
            self._idle.discard(key)
        else:
            self._idle.add(key)
        if prev is not None and now > prev[0]:
            dt = now - prev[0]
            # a counter that went down means a new object took the old one's name: no rate
            self._rates[key] = {k: max(0.0, (v - prev[1].get(k, v)) / dt)
                                for k, v in counters.items()}
        self._last[key] = (now, counters)

    def sample(self) -> None:
        now = time.monotonic()
        seen: set[Key] = set()
        b = self.broker
        vhost_now: dict[str, dict[str, int]] = {}
        for vh in b.runtime.vhosts.values():
            for q in vh.queues.values():
                c = queue_counters(q)
                c.update(messages=q.message_count + q.unacked, messages_ready=q.message_count,
                         messages_unacknowledged=q.unacked)
                self._observe(("queue", vh.name, q.name), now, c, seen)
            for ex in vh.exchanges.values():
                self._observe(("exchange", vh.name, ex.name), now, exchange_counters(ex), seen)
            vc = vhost_counters(vh)
            vhost_now[vh.name] = vc
            self._observe(("vhost", vh.name), now, {**vc, **queue_depths(vh.queues.values())},
                          seen)
        for name, counters in self._last_vhosts.items():
            if name not in vhost_now:
                for k in ("deliver_get", "ack", "redeliver"):
                    self._retired_node[k] = self._retired_node.get(k, 0) + counters.get(k, 0)
        self._last_vhosts = vhost_now
        for conn in list(b.runtime.connections):
            cs = conn.stats()
            self._observe(("connection", conn.name), now,
                          {"recv_oct": cs.recv_bytes, "send_oct": cs.send_bytes}, seen)
            for ch in cs.channels:
                self._observe(("channel", conn.name, ch.number), now, channel_counters(ch), seen)
        queues = [q for vh in b.runtime.vhosts.values() for q in vh.queues.values()]
        depths = queue_depths(queues)
        self._observe(NODE, now, {**self.node_counters(), **depths}, seen)
        for key in [k for k in self._last if k not in seen]:
            self._last.pop(key, None)
            self._rates.pop(key, None)
            self._active_at.pop(key, None)
            self._idle.discard(key)
        rates = self._rates.get(NODE, {})
        self.history.append({"time": time.time(), "publish": rates.get("publish", 0.0),
                             "deliver_get": rates.get("deliver_get", 0.0),
                             "ack": rates.get("ack", 0.0), **depths})
        del self.history[:-self.history_len]

    def idle_since(self, key: Key) -> str | None:
        """When the object last changed, if nothing happened between the last two samples
        (RabbitMQ's idle_since), else None."""
        if key not in self._idle or key not in self._active_at:
            return None
        t = time.gmtime(self._active_at[key])
        return time.strftime("%Y-%m-%dT%H:%M:%S", t) + "+00:00"

    def rate(self, key: Key, field: str) -> float:
        return round(self._rates.get(key, {}).get(field, 0.0), 1)

    def message_stats(self, key: Key, counters: dict[str, int]) -> dict[str, Any]:
        """RabbitMQ's shape: {"publish": n, "publish_details": {"rate": r}, …}."""
        out: dict[str, Any] = {}
        for k, v in counters.items():
            out[k] = v
            out[k + "_details"] = {"rate": self.rate(key, k)}
        return out

    def details(self, key: Key, fields: dict[str, int]) -> dict[str, Any]:
        """Gauges with their rate of change ("messages_details"), as RabbitMQ adds them."""
        out: dict[str, Any] = {}
        for k, v in fields.items():
            out[k] = v
            out[k + "_details"] = {"rate": self.rate(key, k)}
        return out
