"""Live figures: message rates from the sampler (a node of its own, sampling every 200 ms),
and /metrics scraped and parsed the way Prometheus does, with rabbitmq_prometheus' names."""

from __future__ import annotations

import time

import pika
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_management_api import Api
from tests.nodeproc import NodeProcess


@pytest.fixture(scope="module")
def fast_node(tmp_path_factory):
    n = NodeProcess(tmp_path_factory.mktemp("fast") / "data",
                    collect_statistics_interval="200").start()
    yield n
    n.stop()


def scrape(node, path: str = "/metrics") -> dict:
    r = requests.get(node.http_url + path, timeout=10)  # no auth, like rabbitmq_prometheus
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def value(families: dict, name: str, **labels: str) -> float:
    family = families[name]
    for s in family.samples:
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample of {name} with {labels}: {family.samples}")


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_rates_in_message_stats(fast_node):
    api = Api(fast_node.http_url)
    conn = pika.BlockingConnection(pika.URLParameters(fast_node.url))
    ch = conn.channel()
    ch.queue_declare("rates-q")
    deadline = time.monotonic() + 1.0
    sent = 0
    while time.monotonic() < deadline:  # a steady publish stream of ~1 s
        for _ in range(20):
            ch.basic_publish("", "rates-q", b"x")
            sent += 1
        time.sleep(0.02)
    conn.process_data_events(0)

    def publishing() -> bool:
        stats = api.get("/api/queues/%2F/rates-q")["message_stats"]
        return stats["publish"] == sent and stats["publish_details"]["rate"] >= 0
    wait_for(publishing)
    q = api.get("/api/queues/%2F/rates-q")
    assert q["messages"] == sent and q["messages_ready"] == sent
    o = api.get("/api/overview")
    assert o["message_stats"]["publish"] >= sent
    assert o["queue_totals"]["messages_ready"] >= sent
    # rates: sampled while messages flowed; the history feeds the UI's charts
    assert any(p["publish"] > 0 for p in o["rates_history"])
    vh = api.get("/api/vhosts/%2F")
    assert vh["message_stats"]["publish"] >= sent
    chans = api.get("/api/channels")
    assert chans[0]["message_stats"]["publish"] == sent

    # consume everything: deliver_get and ack counters and their rates
    got = 0
    for _method, _props, _body in ch.consume("rates-q", inactivity_timeout=1):
        if _method is None:
            break
        ch.basic_ack(_method.delivery_tag)
        got += 1
        if got == sent:
            break
    ch.cancel()

    def acked() -> bool:
        s = api.get("/api/queues/%2F/rates-q")["message_stats"]
        return s["ack"] == sent and s["deliver_get"] == sent
    wait_for(acked)
    wait_for(lambda: api.get("/api/overview")["message_stats"]["ack_details"]["rate"] > 0)
    # rates fall back to zero once nothing moves
    wait_for(lambda: api.get("/api/queues/%2F/rates-q")["message_stats"]["publish_details"][
        "rate"] == 0.0)
    conn.close()


def test_metrics_aggregated(fast_node):
    api = Api(fast_node.http_url)
    api("PUT", "/api/queues/%2F/metrics-q", json={"durable": True})
    conn = pika.BlockingConnection(pika.URLParameters(fast_node.url))
    ch = conn.channel()
    ch.confirm_delivery()
    for _ in range(5):
        ch.basic_publish("", "metrics-q", b"m", pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("", "no-such-queue", b"dropped")
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish("", "no-such-queue", b"returned", mandatory=True)
    method, _props, _body = ch.basic_get("metrics-q")
    ch.basic_ack(method.delivery_tag)
    ch.basic_get("metrics-q")  # unacked

    m = scrape(fast_node)
    # HELP and TYPE as rabbitmq_prometheus has them
    assert m["rabbitmq_queue_messages_ready"].type == "gauge"
    assert m["rabbitmq_queue_messages_ready"].documentation == (
        "Messages ready to be delivered to consumers")
    assert m["rabbitmq_global_messages_received"].type == "counter"
    for name in ("rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked",
                 "rabbitmq_queue_messages", "rabbitmq_queue_consumers", "rabbitmq_connections",
                 "rabbitmq_channels", "rabbitmq_consumers", "rabbitmq_queues",
                 "rabbitmq_process_resident_memory_bytes", "rabbitmq_disk_space_available_bytes",
                 "rabbitmq_build_info", "rabbitmq_identity_info", "rabbitmq_raft_term",
                 "rabbitmq_raft_log_commit_index"):
        assert name in m, name
    for name in ("received", "routed", "delivered", "acknowledged", "confirmed",
                 "unroutable_dropped", "unroutable_returned", "redelivered"):
        assert f"rabbitmq_global_messages_{name}" in m, name
        assert m[f"rabbitmq_global_messages_{name}"].samples[0].name.endswith("_total")
    assert value(m, "rabbitmq_global_messages_received", protocol="amqp091") >= 7
    assert value(m, "rabbitmq_global_messages_unroutable_dropped", protocol="amqp091") >= 1
    assert value(m, "rabbitmq_global_messages_unroutable_returned", protocol="amqp091") >= 1
    assert value(m, "rabbitmq_global_messages_confirmed", protocol="amqp091") >= 5
    assert value(m, "rabbitmq_global_messages_acknowledged", protocol="amqp091") >= 1
    assert value(m, "rabbitmq_global_messages_delivered", protocol="amqp091") >= 2
    assert value(m, "rabbitmq_connections") >= 1 and value(m, "rabbitmq_channels") >= 1
    assert value(m, "rabbitmq_process_resident_memory_bytes") > 1_000_000
    assert value(m, "rabbitmq_disk_space_available_bytes") > 0
    assert value(m, "rabbitmq_raft_term") >= 1
    identity = m["rabbitmq_identity_info"].samples[0].labels
    assert identity["rabbitmq_node"] == fast_node.name and "rabbitmq_cluster" in identity
    assert "rabbitmq_version" in m["rabbitmq_build_info"].samples[0].labels
    # aggregated: one sample per family, no per-queue labels
    assert [s.labels for s in m["rabbitmq_queue_messages_ready"].samples] == [{}]
    assert value(m, "rabbitmq_queue_messages_unacked") >= 1

    per = scrape(fast_node, "/metrics/per-object")
    assert value(per, "rabbitmq_queue_messages_ready", vhost="/", queue="metrics-q") == 3
    assert value(per, "rabbitmq_queue_messages_unacked", vhost="/", queue="metrics-q") == 1
    assert value(per, "rabbitmq_queue_messages", vhost="/", queue="metrics-q") == 4
    # body bytes of the 3 ready messages, as the API's message_bytes_ready counts them
    assert value(per, "rabbitmq_queue_messages_ready_bytes", vhost="/", queue="metrics-q") == (
        api("GET", "/api/queues/%2F/metrics-q").json()["message_bytes_ready"]) == 3

    # global counters survive the objects they counted
    before = value(m, "rabbitmq_global_messages_acknowledged", protocol="amqp091")
    conn.close()
    api("DELETE", "/api/queues/%2F/metrics-q")
    after = scrape(fast_node)
    assert value(after, "rabbitmq_global_messages_acknowledged", protocol="amqp091") >= before
    assert value(after, "rabbitmq_global_messages_received", protocol="amqp091") >= 7
