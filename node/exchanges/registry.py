"""Exchange types by their AMQP name."""

from __future__ import annotations

from node.amqp.standard_exchanges import STANDARD_EXCHANGES as DEFAULT_EXCHANGES
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

# Exchanges every vhost has, as (name, type, internal) (node/amqp/standard_exchanges.py).
STANDARD_EXCHANGES: tuple[tuple[str, str, bool], ...] = tuple(
    (name, type_name, internal) for name, (type_name, internal) in DEFAULT_EXCHANGES.items())
