"""rabbitmq_prometheus global counters that dashboards chart: deliveries by ack mode,
empty gets, confirm-mode publishes, connection and channel churn."""

from __future__ import annotations

import urllib.request

import pika
from prometheus_client.parser import text_string_to_metric_families


def scrape(node) -> dict[str, float]:
    with urllib.request.urlopen(node.http_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if not s.labels or s.labels.get("protocol"):
                out[s.name] = s.value
    return out


def test_global_counters_move(node):
    before = scrape(node)
    c = pika.BlockingConnection(pika.URLParameters(node.url))
    ch = c.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.confirm_delivery()
    for _ in range(3):
        ch.basic_publish("", q, b"x")
    ch.basic_get(q, auto_ack=True)
    m, _, _ = ch.basic_get(q)
    ch.basic_ack(m.delivery_tag)
    ch.basic_consume(q, lambda *a: None, auto_ack=True)
    c.process_data_events(time_limit=0.3)
    ch2 = c.channel()
    ch2.queue_declare("metrics_empty")
    ch2.basic_get("metrics_empty")
    ch2.queue_delete("metrics_empty")
    ch2.close()
    c.close()
    after = scrape(node)

    def grew(name: str, by: float = 1) -> bool:
        return after[name] - before.get(name, 0) >= by

    assert grew("rabbitmq_global_messages_received_confirm_total", 3)
    assert grew("rabbitmq_global_messages_delivered_get_auto_ack_total")
    assert grew("rabbitmq_global_messages_delivered_get_manual_ack_total")
    assert grew("rabbitmq_global_messages_delivered_consume_auto_ack_total")
    assert grew("rabbitmq_global_messages_get_empty_total")
    assert grew("rabbitmq_connections_opened_total")
    assert grew("rabbitmq_channels_opened_total", 2)
    assert grew("rabbitmq_channels_closed_total")
