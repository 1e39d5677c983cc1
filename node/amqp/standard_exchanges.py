"""The exchanges every vhost has, as RabbitMQ creates them (rabbit_vhost:do_add): name ->
(type, internal).  An AMQP fact: the replicated definitions (cluster/definitions.py) and
the runtime (node/exchanges/registry.py) both take it from here, so they never disagree
(the default exchange is "")."""

from __future__ import annotations

STANDARD_EXCHANGES: dict[str, tuple[str, bool]] = {
    "": ("direct", False),
    "amq.direct": ("direct", False),
    "amq.fanout": ("fanout", False),
    "amq.topic": ("topic", False),
    "amq.headers": ("headers", False),
    "amq.match": ("headers", False),
    "amq.rabbitmq.trace": ("topic", True),
}
