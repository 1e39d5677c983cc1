"""Routing across exchange-to-exchange bindings, alternate exchanges and CC/BCC keys,
as RabbitMQ 3.10's rabbit_exchange:route/2 does it (each expectation was checked against
a RabbitMQ 3.10 node with the same topology)."""

from __future__ import annotations

from node.amqp import spec
from node.amqp.frames import content_header_payload
from node.amqp.message import Message
from node.exchanges.base import Destination
from node.vhost import VirtualHost


def message(exchange: str, routing_key: str, headers: dict | None = None) -> Message:
    props = spec.BasicProperties(headers=headers)
    header = content_header_payload(60, 1, props.encode())
    return Message.from_publish(exchange, routing_key, header, b"x")


def routed(vh: VirtualHost, exchange: str, routing_key: str,
           headers: dict | None = None) -> list[str]:
    return sorted(q.name for q in vh.route(vh.exchanges[exchange],
                                           message(exchange, routing_key, headers)))


def topology() -> VirtualHost:
    """x1 -(k)-> x2 -(other)-> qc; x1's alternate ae1 -> qb; x2's alternate ae2 -> qa."""
    vh = VirtualHost("/", None)
    for name in ("ae1", "ae2"):
        vh.add_exchange(name, "fanout")
    vh.add_exchange("x2", "direct", arguments={"alternate-exchange": "ae2"})
    vh.add_exchange("x1", "direct", arguments={"alternate-exchange": "ae1"})
    for q in ("qa", "qb", "qc"):
        vh.add_queue(q)
    vh.bind("ae2", Destination("queue", "qa"), "", {})
    vh.bind("ae1", Destination("queue", "qb"), "", {})
    vh.bind("x1", Destination("exchange", "x2"), "k", {})
    vh.bind("x2", Destination("queue", "qc"), "other", {})
    return vh


def test_exchange_inside_the_graph_falls_back_to_its_own_alternate():
    # x1 matches (-> x2), x2 matches nothing: x2's alternate takes it, not x1's
    assert routed(topology(), "x1", "k") == ["qa"]


def test_first_exchange_without_match_uses_its_alternate():
    assert routed(topology(), "x1", "zz") == ["qb"]


def test_alternate_not_used_when_the_exchange_matched_an_exchange_that_routes_nowhere():
    vh = VirtualHost("/", None)
    vh.add_exchange("ae3", "fanout")
    vh.add_queue("qd")
    vh.bind("ae3", Destination("queue", "qd"), "", {})
    vh.add_exchange("x3", "direct", arguments={"alternate-exchange": "ae3"})
    vh.add_exchange("x4", "direct")
    vh.bind("x3", Destination("exchange", "x4"), "k", {})
    assert routed(vh, "x3", "k") == []  # RabbitMQ returns it (mandatory)


def test_cc_keys_route_at_every_exchange_on_the_path():
    vh = VirtualHost("/", None)
    vh.add_exchange("x3", "direct")
    vh.add_exchange("x4", "direct")
    vh.add_queue("q")
    vh.bind("x3", Destination("exchange", "x4"), "a", {})
    vh.bind("x4", Destination("queue", "q"), "b", {})
    assert routed(vh, "x3", "a", {"CC": [b"b"]}) == ["q"]
    assert routed(vh, "x3", "b", {"CC": [b"a"]}) == ["q"]
    assert routed(vh, "x3", "a", {"BCC": [b"b"]}) == ["q"]
    assert routed(vh, "x3", "a") == []


def test_cycles_end():
    vh = VirtualHost("/", None)
    vh.add_exchange("a", "fanout")
    vh.add_exchange("b", "fanout")
    vh.add_queue("q")
    vh.bind("a", Destination("exchange", "b"), "", {})
    vh.bind("b", Destination("exchange", "a"), "", {})
    vh.bind("b", Destination("queue", "q"), "", {})
    assert routed(vh, "a", "k") == ["q"]


def test_default_exchange_routes_cc_to_named_queues():
    vh = VirtualHost("/", None)
    vh.add_queue("q1")
    vh.add_queue("q2")
    assert routed(vh, "", "q1", {"CC": [b"q2"], "BCC": [b"q1"]}) == ["q1", "q2"]
