"""Idle_since is measured by the statistics sampler (shown only while a
queue is seen idle, with the time it last changed)."""

from __future__ import annotations

from types import SimpleNamespace

from node.http.stats import Sampler


def _queue() -> SimpleNamespace:
    return SimpleNamespace(name="q", stats_publish=0, stats_deliver=0, stats_ack=0,
                           stats_redeliver=0, message_count=0, unacked=0)


def test_idle_since_follows_activity() -> None:
    q = _queue()
    vh = SimpleNamespace(name="/", queues={"q": q}, exchanges={}, retired_stats={})
    broker = SimpleNamespace(runtime=SimpleNamespace(vhosts={"/": vh}, connections=set()),
                             counters=SimpleNamespace(published=0, unroutable=0,
                                                      returned=0, confirmed=0))
    s = Sampler(broker, 5)
    key = ("queue", "/", "q")
    s.sample()
    assert s.idle_since(key) is None  # one reading: nothing known yet
    s.sample()
    idle = s.idle_since(key)
    assert idle is not None and idle.endswith("+00:00")
    q.stats_publish += 1
    q.message_count += 1
    s.sample()
    assert s.idle_since(key) is None  # busy since the last reading
    s.sample()
    assert s.idle_since(key) is not None
