"""Prometheus metrics at /metrics (aggregated) and /metrics/per-object, with the names, types
and HELP texts of rabbitmq_prometheus, so RabbitMQ's Grafana dashboards work unchanged.

Written by hand in the text exposition format (0.0.4): a scrape only reads counters the
broker already keeps; it adds nothing to the message path."""

from __future__ import annotations

import platform
import time
from typing import Any, Callable, Iterable

from aiohttp import web

from node.http import system
from node.http.rabbitmq_json import channel_name
from node.read_models import QueueStats
from node.runtime.broker import VERSION

routes = web.RouteTableDef()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROTOCOL = {"protocol": "amqp091"}

Labels = dict[str, str]
Sample = tuple[Labels, float]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


class Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        """One family: HELP, TYPE, then its samples (a counter's name ends in _total)."""
        samples = list(samples)
        if not samples:
            return
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if labels:
                inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
                self.lines.append(f"{name}{{{inner}}} {_number(value)}")
            else:
                self.lines.append(f"{name} {_number(value)}")

    def gauge(self, name: str, help_text: str, value: float, labels: Labels | None = None
              ) -> None:
        self.add(name, "gauge", help_text, [(labels or {}, value)])

    def counter(self, name: str, help_text: str, value: float, labels: Labels | None = None
                ) -> None:
        self.add(name, "counter", help_text, [(labels or {}, value)])

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


# per queue: (metric, type, help, reader of the queue and its read model)
QUEUE_METRICS: list[tuple[str, str, str, Callable[[Any, QueueStats], int]]] = [
    ("rabbitmq_queue_messages_ready", "gauge",
     "Messages ready to be delivered to consumers", lambda q, s: s.messages_ready),
    ("rabbitmq_queue_messages_unacked", "gauge",
     "Messages delivered to consumers but not yet acknowledged",
     lambda q, s: s.messages_unacknowledged),
    ("rabbitmq_queue_messages", "gauge",
     "Sum of ready and unacknowledged messages - total queue depth",
     lambda q, s: s.messages_ready + s.messages_unacknowledged),
    # all ready messages, paged-out ones too, as RabbitMQ and the API's message_bytes_ready
    ("rabbitmq_queue_messages_ready_bytes", "gauge", "Size in bytes of ready messages",
     lambda q, s: s.message_bytes_ready),
    ("rabbitmq_queue_messages_paged_out", "gauge", "Messages paged out to disk",
     lambda q, s: s.messages_paged_out),
    ("rabbitmq_queue_consumers", "gauge", "Consumers on a queue",
     lambda q, s: len(s.consumers)),
    ("rabbitmq_queue_messages_published_total", "counter",
     "Total number of messages published to queues", lambda q, s: q.stats_publish),
]

CHANNEL_METRICS: list[tuple[str, str, str, str]] = [
    ("rabbitmq_channel_messages_published_total", "counter",
     "Total number of messages published into an exchange on a channel", "stats_publish"),
    ("rabbitmq_channel_messages_delivered_ack_total", "counter",
     "Total number of messages delivered to consumers in manual acknowledgement mode",
     "stats_deliver_manual_ack"),
    ("rabbitmq_channel_messages_acked_total", "counter",
     "Total number of messages acknowledged by consumers", "stats_ack"),
]


def _queues(broker: Any) -> list[tuple[str, Any, QueueStats]]:
    return [(vh.name, q, q.stats()) for vh in broker.runtime.vhosts.values()
            for q in list(vh.queues.values())]


def render(broker: Any, stats: Any, per_object: bool) -> str:
    e = Exposition()
    s = broker.settings
    e.gauge("rabbitmq_build_info", "RabbitMQ & Erlang/OTP version info", 1, {
        "rabbitmq_version": VERSION, "prometheus_plugin_version": VERSION,
        "prometheus_client_version": VERSION,
        "erlang_version": f"python-{platform.python_version()}"})
    e.gauge("rabbitmq_identity_info", "RabbitMQ node & cluster identity info", 1, {
        "rabbitmq_node": s.node_name,
        "rabbitmq_cluster": broker.runtime.cluster_name,
        "rabbitmq_cluster_permanent_id": f"warren-{s.node_name}"})

    queues = _queues(broker)
    conns = [(c, c.stats()) for c in list(broker.runtime.connections)]
    channels = [(c, ch, ch.stats()) for c, cs in conns for ch in cs.channels]
    consumers = sum(len(qs.consumers) for _v, _q, qs in queues)
    e.gauge("rabbitmq_connections", "Connections currently open", len(broker.runtime.connections))
    e.gauge("rabbitmq_channels", "Channels currently open", len(channels))
    e.gauge("rabbitmq_consumers", "Consumers currently connected", consumers)
    e.gauge("rabbitmq_queues", "Queues available", len(queues))

    # global counters: monotonic, they survive connection and queue churn
    n = stats.node_counters()
    for metric, help_text, value in (
            ("received", "Total number of messages received from publishers", n["publish"]),
            ("routed", "Total number of messages routed to queues or streams", n["routed"]),
            ("unroutable_dropped", "Total number of messages published as non-mandatory into "
             "an exchange and dropped as unroutable", n["drop_unroutable"]),
            ("unroutable_returned", "Total number of messages published as mandatory into an "
             "exchange and returned to the publisher as unroutable", n["return_unroutable"]),
            ("confirmed", "Total number of messages confirmed to publishers", n["confirm"]),
            ("delivered", "Total number of messages delivered to consumers", n["deliver_get"]),
            ("redelivered", "Total number of messages redelivered to consumers",
             n["redeliver"]),
            ("acknowledged", "Total number of messages acknowledged by consumers", n["ack"])):
        e.counter(f"rabbitmq_global_messages_{metric}_total", help_text, value, PROTOCOL)
    for metric, help_text in (
            ("delivered_consume_auto_ack", "Total number of messages delivered to consumers "
             "using basic.consume with automatic acknowledgment"),
            ("delivered_consume_manual_ack", "Total number of messages delivered to consumers "
             "using basic.consume with manual acknowledgment"),
            ("delivered_get_auto_ack", "Total number of messages delivered to consumers using "
             "basic.get with automatic acknowledgment"),
            ("delivered_get_manual_ack", "Total number of messages delivered to consumers "
             "using basic.get with manual acknowledgment"),
            ("get_empty", "Total number of times basic.get operations fetched no message"),
            ("received_confirm", "Total number of messages received from publishers expecting "
             "confirmations")):
        e.counter(f"rabbitmq_global_messages_{metric}_total", help_text,
                  getattr(broker.counters, metric), PROTOCOL)
    for metric, help_text, attr in (
            ("rabbitmq_connections_opened_total", "Total number of connections opened",
             "connections_opened"),
            ("rabbitmq_connections_closed_total", "Total number of connections closed or "
             "terminated", "connections_closed"),
            ("rabbitmq_channels_opened_total", "Total number of channels opened",
             "channels_opened"),
            ("rabbitmq_channels_closed_total", "Total number of channels closed",
             "channels_closed")):
        e.counter(metric, help_text, getattr(broker.counters, attr))
    e.gauge("rabbitmq_global_consumers", "Consumers currently connected", consumers, PROTOCOL)

    for metric, kind, help_text, read in QUEUE_METRICS:
        if per_object:
            e.add(metric, kind, help_text, [({"vhost": v, "queue": q.name}, read(q, qs))
                                            for v, q, qs in queues])
        else:
            e.add(metric, kind, help_text, [({}, sum(read(q, qs) for _v, q, qs in queues))])

    for metric, help_text, read_conn in (
            ("rabbitmq_connection_incoming_bytes_total",
             "Total number of bytes received on a connection", lambda cs: cs.recv_bytes),
            ("rabbitmq_connection_outgoing_bytes_total",
             "Total number of bytes sent on a connection", lambda cs: cs.send_bytes)):
        if per_object:
            e.add(metric, "counter", help_text, [({"connection": c.name}, read_conn(cs))
                                                 for c, cs in conns])
        else:
            e.add(metric, "counter", help_text, [({}, sum(read_conn(cs) for _c, cs in conns))])
    if per_object:
        e.add("rabbitmq_connection_channels", "gauge", "Channels on a connection",
              [({"connection": c.name}, len(cs.channels)) for c, cs in conns])

    for metric, kind, help_text, key in CHANNEL_METRICS:
        if per_object:
            e.add(metric, kind, help_text, [({"channel": channel_name(c, ch)},
                                             getattr(ch, key, 0)) for c, ch, _s in channels])
        else:
            e.add(metric, kind, help_text,
                  [({}, sum(getattr(ch, key, 0) for _c, ch, _s in channels))])
    e.add("rabbitmq_channel_messages_unacked", "gauge",
          "Delivered but not yet acknowledged messages",
          [({"channel": channel_name(c, ch)}, s.messages_unacknowledged)
           for c, ch, s in channels]
          if per_object else [({}, sum(s.messages_unacknowledged for _c, _ch, s in channels))])

    e.gauge("rabbitmq_process_resident_memory_bytes", "Memory used in bytes",
            system.resident_memory())
    e.gauge("rabbitmq_resident_memory_limit_bytes", "Memory high watermark in bytes",
            system.memory_limit(broker))
    e.gauge("rabbitmq_disk_space_available_bytes", "Disk space available in bytes",
            system.disk_free(s.data_dir))
    e.gauge("rabbitmq_disk_space_available_limit_bytes", "Free disk space low watermark in "
            "bytes", system.disk_free_limit(broker))
    e.gauge("rabbitmq_process_open_fds", "Open file descriptors", system.open_fds())
    e.gauge("rabbitmq_process_max_fds", "Open file descriptors limit", system.max_fds())
    e.gauge("rabbitmq_erlang_uptime_seconds", "Node uptime",
            round(time.time() - broker.runtime.started_at, 3))
    _raft(e, broker, per_object)
    _replication(e, broker)
    return e.text()


def _replication(e: Exposition, broker: Any) -> None:
    """WarrenMQ's own families (RabbitMQ has no vhost replication): per vhost this node
    owns, each replica's lag and the in-sync set's size; failovers this node decided (as
    Raft leader) and moves it carried out (as owner)."""
    r = broker.roles
    lag_records, lag_bytes, in_sync = [], [], []
    for vhost, source in sorted(r.sources.items()):
        in_sync.append(({"vhost": vhost}, 1 + len(source.in_sync)))
        for node, lag in sorted(source.lag().items()):
            lag_records.append(({"vhost": vhost, "replica": node}, lag["records"]))
            lag_bytes.append(({"vhost": vhost, "replica": node}, lag["bytes"]))
    e.add("warren_vhost_replication_lag_records", "gauge",
          "Records the owner committed that a replica has not acknowledged", lag_records)
    e.add("warren_vhost_replication_lag_bytes", "gauge",
          "Bytes of change-log records a replica has not acknowledged", lag_bytes)
    e.add("warren_vhost_in_sync_copies", "gauge",
          "Copies of a vhost's messages known complete, the owner's included", in_sync)
    e.counter("warren_vhost_failovers_total",
              "Vhosts this node promoted a replica of, as Raft leader", r.controller.failovers)
    e.counter("warren_vhost_moves_total", "Vhosts this node moved away, as their owner",
              r.moves)


def _raft(e: Exposition, broker: Any, per_object: bool) -> None:
    status = broker.metadata.status()
    labels = {"raft_cluster": "warren_metadata"} if per_object else {}
    for metric, kind, help_text, key in (
            ("rabbitmq_raft_term_total", "counter", "Current Raft term number", "term"),
            ("rabbitmq_raft_log_commit_index", "gauge", "Raft log commit index",
             "commit_index"),
            ("rabbitmq_raft_log_last_applied_index", "gauge", "Raft log last applied index",
             "last_applied")):
        value = status.get(key)
        if isinstance(value, int):
            e.add(metric, kind, help_text, [(labels, value)])
    checks = broker.metadata.digest_status()
    e.counter("warren_definitions_digest_checks_total", "Checks of this node's definitions "
              "against the Raft leader's digest at the same log position", checks["checks"])
    e.gauge("warren_definitions_diverged", "1 when the last check found this node's "
            "definitions different from the Raft leader's", 1 if checks["diverged"] else 0)


def _response(request: web.Request, per_object: bool) -> web.Response:
    text = render(request.app["broker"], request.app["stats"], per_object)
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return _response(request, per_object=False)


@routes.get("/metrics/per-object")
async def metrics_per_object(request: web.Request) -> web.Response:
    return _response(request, per_object=True)

