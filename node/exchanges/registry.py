"""Exchange types by their AMQP name."""

from __future__ import annotations

from node.exchanges.base import Exchange
from node.exchanges.direct import DirectExchange
from node.exchanges.fanout import FanoutExchange
from node.exchanges.headers import HeadersExchange
from node.exchanges.topic import TopicExchange

EXCHANGE_TYPES: dict[str, type[Exchange]] = {
    "direct": DirectExchange,
    "fanout": FanoutExchange,
    "topic": TopicExchange,
    "headers": HeadersExchange,
}

# Exchanges every vhost has, as RabbitMQ creates them (the default exchange is "").
STANDARD_EXCHANGES: tuple[tuple[str, str], ...] = (
    ("", "direct"),
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
)
