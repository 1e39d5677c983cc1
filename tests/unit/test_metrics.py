"""The management plane's arithmetic without a node: Prometheus exposition text, rates from
counter samples, totals that survive deleted objects, binding property keys."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.http import stats as stats_mod
from node.http.metrics import Exposition
from node.http.rabbitmq_json import properties_key
from node.http.stats import Sampler


def test_exposition_parses_with_prometheus_client():
    e = Exposition()
    e.gauge("rabbitmq_queues", "Queues available", 3)
    e.counter("rabbitmq_global_messages_received_total",
              "Total number of messages received from publishers", 12, {"protocol": "amqp091"})
    e.add("rabbitmq_queue_messages_ready", "gauge", "Messages ready to be delivered to consumers",
          [({"vhost": "/", "queue": 'we"ird\\name\nx'}, 5), ({"vhost": "/", "queue": "b"}, 0.5)])
    e.add("rabbitmq_empty", "gauge", "never shown", [])
    families = {f.name: f for f in text_string_to_metric_families(e.text())}
    assert set(families) == {"rabbitmq_queues", "rabbitmq_global_messages_received",
                             "rabbitmq_queue_messages_ready"}
    received = families["rabbitmq_global_messages_received"]
    assert received.type == "counter"
    assert received.samples[0].name == "rabbitmq_global_messages_received_total"
    assert received.samples[0].labels == {"protocol": "amqp091"}
    assert received.samples[0].value == 12
    ready = families["rabbitmq_queue_messages_ready"].samples
    assert ready[0].labels["queue"] == 'we"ird\\name\nx'
    assert ready[1].value == 0.5
    assert families["rabbitmq_queues"].documentation == "Queues available"


def fake_queue(name: str, **counters: int) -> SimpleNamespace:
    base = dict(stats_publish=0, stats_deliver=0, stats_ack=0, stats_redeliver=0,
                message_count=0, unacked=0)
    base.update(counters)
    return SimpleNamespace(name=name, **base)


def fake_broker(queues: dict) -> SimpleNamespace:
    vh = SimpleNamespace(name="/", queues=queues, exchanges={}, retired_stats={},
                         connections=set())
    return SimpleNamespace(
        runtime=SimpleNamespace(vhosts={"/": vh}, connections=set()),
        counters=SimpleNamespace(published=0, unroutable=0, returned=0, confirmed=0))


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(stats_mod.time, "monotonic", lambda: now[0])
    return now


def test_rates_come_from_counter_deltas(clock):
    q = fake_queue("q")
    b = fake_broker({"q": q})
    s = Sampler(b, 5)
    s.sample()
    q.stats_publish, q.stats_deliver, q.message_count = 50, 20, 30
    b.counters.published = 50
    clock[0] += 5
    s.sample()
    ms = s.message_stats(("queue", "/", "q"), stats_mod.queue_counters(q))
    assert ms["publish"] == 50 and ms["publish_details"] == {"rate": 10.0}
    assert ms["deliver_get_details"] == {"rate": 4.0}
    assert ms["ack_details"] == {"rate": 0.0}
    assert s.rate(stats_mod.NODE, "publish") == 10.0
    assert s.details(("queue", "/", "q"), {"messages_ready": 30})[
        "messages_ready_details"] == {"rate": 6.0}
    assert s.history[-1]["publish"] == 10.0
    clock[0] += 5
    s.sample()  # nothing moved: rates drop to zero
    assert s.rate(("queue", "/", "q"), "publish") == 0.0


def test_a_recreated_queue_never_gets_a_negative_rate(clock):
    b = fake_broker({"q": fake_queue("q", stats_publish=100)})
    s = Sampler(b, 5)
    s.sample()
    b.runtime.vhosts["/"].queues["q"] = fake_queue("q", stats_publish=3)
    clock[0] += 5
    s.sample()
    assert s.rate(("queue", "/", "q"), "publish") == 0.0


def test_node_totals_keep_deleted_queues_and_vhosts(clock):
    b = fake_broker({"q": fake_queue("q", stats_ack=7, stats_deliver=9)})
    s = Sampler(b, 5)
    assert s.node_counters()["ack"] == 7
    # a deleted queue's counters move to its vhost's retired_stats (VirtualHost.remove_queue)
    b.runtime.vhosts["/"].retired_stats = {"stats_ack": 7, "stats_deliver": 9}
    b.runtime.vhosts["/"].queues = {}
    assert s.node_counters()["ack"] == 7
    s.sample()
    del b.runtime.vhosts["/"]  # a deleted vhost's counters stay in the sampler
    s.sample()
    assert s.node_counters()["ack"] == 7 and s.node_counters()["deliver_get"] == 9


def test_node_counters_split_unroutable():
    b = fake_broker({})
    b.counters.published, b.counters.unroutable, b.counters.returned, b.counters.confirmed = 10, 4, 1, 6
    c = Sampler(b, 5).node_counters()
    assert (c["publish"], c["routed"], c["drop_unroutable"], c["return_unroutable"],
            c["confirm"]) == (10, 6, 3, 1, 6)


def test_binding_properties_key():
    assert properties_key("", {}) == "~"
    assert properties_key("a.*", {}) == "a.%2A"
    k1 = properties_key("rk", {"x-match": "all", "a": 1})
    assert k1.startswith("rk~") and k1 == properties_key("rk", {"a": 1, "x-match": "all"})
    assert k1 != properties_key("rk", {"x-match": "any", "a": 1})
