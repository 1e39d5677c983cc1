"""Exchange routing rules, checked against RabbitMQ's documented edge cases."""

from __future__ import annotations

from decimal import Decimal

import pytest

from node.amqp.fields import ByteArray, Timestamp
from node.exchanges.base import Binding, Destination
from node.exchanges.direct import DirectExchange
from node.exchanges.fanout import FanoutExchange
from node.exchanges.headers import HeadersExchange, headers_match
from node.exchanges.topic import TopicExchange, topic_matches

Q = Destination("queue", "q")


@pytest.mark.parametrize("binding,key,expected", [
    ("a.b.c", "a.b.c", True),
    ("a.b.c", "a.b", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.b.b.c", False),
    ("a.#", "a", True),  # "#" matches zero words
    ("a.#", "a.b.c", True),
    ("#.c", "c", True),
    ("#.c", "a.b.c", True),
    ("#", "", True),
    ("#", "anything.at.all", True),
    ("*", "", False),  # "" has no words (RabbitMQ 3.10: only "", "#", "#.#" match it)
    ("*", "a.b", False),
    ("a.#.c", "a.c", True),
    ("a.#.c", "a.b.b.c", True),
    ("a.#.c", "a.b.b.d", False),
    ("#.#", "a", True),
    ("#.*", "", False),
    ("#.#", "", True),
    ("*", ".", False),  # "." is two empty words
    ("*.*", ".", True),
    ("*.*", "a.", True),  # empty words count
    ("a..b", "a..b", True),
    ("a.*.b", "a..b", True),
    ("*.#", "", False),
    ("a.*.#", "a", False),
    ("a.*.#", "a.b", True),
    ("#.b.#", "a.b.c", True),
    ("#.b.#", "b", True),
    ("#.b.#", "a.c", False),
    ("", "", True),
    ("", "a", False),
])
def test_topic_matching(binding, key, expected):
    assert topic_matches(binding, key) is expected


def test_topic_cache_invalidated_on_unbind():
    ex = TopicExchange("/", "t")
    b = Binding("t", Q, "a.*", {})
    ex.add_binding(b)
    assert Q in ex.route("a.x", None)
    ex.remove_binding(b)
    assert Q not in ex.route("a.x", None)
    assert ex._root.children == {}  # pruned


def test_direct_same_destination_two_bindings():
    ex = DirectExchange("/", "d")
    b1 = Binding("d", Q, "k", {})
    b2 = Binding("d", Q, "k", {"x-extra": 1})
    ex.add_binding(b1)
    ex.add_binding(b2)
    assert list(ex.route("k", None)) == [Q]
    ex.remove_binding(b1)
    assert list(ex.route("k", None)) == [Q]
    ex.remove_binding(b2)
    assert list(ex.route("k", None)) == []


def test_fanout_ignores_key():
    ex = FanoutExchange("/", "f")
    ex.add_binding(Binding("f", Q, "ignored", {}))
    assert list(ex.route("whatever", None)) == [Q]


@pytest.mark.parametrize("args,headers,expected", [
    ({"x-match": "all", "a": 1, "b": 2}, {"a": 1, "b": 2, "c": 3}, True),
    ({"x-match": "all", "a": 1, "b": 2}, {"a": 1}, False),
    ({"a": 1, "b": 2}, {"a": 1, "b": 2}, True),  # all is the default
    ({"x-match": "any", "a": 1, "b": 2}, {"b": 2}, True),
    ({"x-match": "any", "a": 1, "b": 2}, {"b": 3}, False),
    ({"x-match": "all"}, {}, True),
    ({"x-match": "any"}, {"a": 1}, False),
    ({"x-match": "all", "a": None}, {"a": "whatever"}, True),  # void: presence only
    ({"x-match": "all", "x-k": 1}, {}, True),  # x- args skipped by plain all
    ({"x-match": "all-with-x", "x-k": 1}, {}, False),
    ({"x-match": "all-with-x", "x-k": 1}, {"x-k": 1}, True),
    ({"x-match": "any-with-x", "x-k": 1, "a": 5}, {"x-k": 1}, True),
    ({"x-match": "any", "x-k": 1}, {"x-k": 1}, False),
    ({"x-match": "all", "s": "v"}, {"s": b"v"}, True),  # longstr vs str
    ({"x-match": "all", "t": True}, {"t": 1}, False),
    # type classes as RabbitMQ 3.10 compares them (checked against it): decimal 1 is not
    # integer 1, every integer width is one class
    ({"x-match": "all", "v": Decimal(1)}, {"v": 1}, False),
    ({"x-match": "all", "v": 1}, {"v": Decimal(1)}, False),
    ({"x-match": "all", "v": Decimal(1)}, {"v": Decimal(1)}, True),
    ({"x-match": "all", "v": Decimal("1.0")}, {"v": Decimal(1)}, False),  # (scale, value)
    ({"x-match": "all", "v": 1}, {"v": 1.0}, False),
    ({"x-match": "all", "v": 2 ** 40}, {"v": 2 ** 40}, True),
    ({"x-match": "all", "v": 1}, {"v": Timestamp(1)}, False),
    # a long string and a byte array with the same bytes are equal (RabbitMQ 3.10 and 4.0)
    ({"x-match": "all", "v": b"1"}, {"v": ByteArray(b"1")}, True),
    ({"x-match": "all", "v": ByteArray(b"1")}, {"v": "1"}, True),
    ({"x-match": "any", "v": Decimal(1), "w": 1}, {"v": 1, "w": 1}, True),
])
def test_headers_matching(args, headers, expected):
    assert headers_match(args, headers) is expected


def test_headers_exchange_routes():
    ex = HeadersExchange("/", "h")
    ex.add_binding(Binding("h", Q, "", {"x-match": "any", "a": 1}))
    assert Q in ex.route("", {"a": 1})
    assert Q not in ex.route("", None)
