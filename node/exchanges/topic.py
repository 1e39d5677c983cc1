"""Topic exchange: binding keys are dot-separated words where `*` matches exactly one word
and `#` matches zero or more.  As in RabbitMQ, words may be empty ("a..b" has three words,
the middle one empty, "." two empty words), but the empty key "" has no words at all: only
"", "#" and "#.#" match it, never "*" (rabbit_exchange_type_topic splits <<>> into []).

Bindings live in a trie of words; results are cached per routing key (publishers reuse a
small set of keys) and the cache is dropped whenever a binding changes."""

from __future__ import annotations

from node.exchanges.base import Binding, Destination, Exchange

_CACHE_MAX = 4096


class _Node:
    __slots__ = ("children", "dests")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.dests: dict[Destination, int] = {}


class TopicExchange(Exchange):
    type_name = "topic"

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self._root = _Node()
        self._cache: dict[str, tuple[Destination, ...]] = {}

    def route(self, routing_key: str, headers: dict | None) -> set[Destination] | list[Destination]:
        hit = self._cache.get(routing_key)
        if hit is not None:
            return hit  # type: ignore[return-value]
        out: set[Destination] = set()
        _match(self._root, _words(routing_key), 0, out)
        result = tuple(out)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[routing_key] = result
        return result  # type: ignore[return-value]

    def _index_add(self, b: Binding) -> None:
        node = self._root
        for w in _words(b.routing_key):
            node = node.children.setdefault(w, _Node())
        node.dests[b.destination] = node.dests.get(b.destination, 0) + 1
        self._cache.clear()

    def _index_remove(self, b: Binding) -> None:
        path = [self._root]
        words = _words(b.routing_key)
        for w in words:
            nxt = path[-1].children.get(w)
            if nxt is None:
                return
            path.append(nxt)
        leaf = path[-1]
        n = leaf.dests.get(b.destination, 0) - 1
        if n > 0:
            leaf.dests[b.destination] = n
        else:
            leaf.dests.pop(b.destination, None)
        # prune empty branches so the trie does not grow with churn
        for i in range(len(words), 0, -1):
            node = path[i]
            if node.dests or node.children:
                break
            del path[i - 1].children[words[i - 1]]
        self._cache.clear()


def _words(key: str) -> list[str]:
    return key.split(".") if key else []


def _match(node: _Node, words: list[str], i: int, out: set[Destination]) -> None:
    if i == len(words):
        out.update(node.dests)
        # trailing "#" nodes match zero further words
        h = node.children.get("#")
        while h is not None:
            out.update(h.dests)
            h = h.children.get("#")
        return
    w = words[i]
    child = node.children.get(w)
    if child is not None:
        _match(child, words, i + 1, out)
    star = node.children.get("*")
    if star is not None:
        _match(star, words, i + 1, out)
    h = node.children.get("#")
    if h is not None:
        # "#" swallows zero or more words: try every split point
        for j in range(i, len(words) + 1):
            _match(h, words, j, out)


def topic_matches(binding_key: str, routing_key: str) -> bool:
    """Reference matcher used by tests: does `binding_key` match `routing_key`?"""
    ex = TopicExchange("/", "t")
    d = Destination("queue", "q")
    ex.add_binding(Binding("t", d, binding_key, {}))
    return d in ex.route(routing_key, None)
