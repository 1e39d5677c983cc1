"""Direct exchange: a message goes to every binding whose key equals its routing key."""

from __future__ import annotations

from node.exchanges.base import Binding, Destination, Exchange


class DirectExchange(Exchange):
    type_name = "direct"

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self._by_key: dict[str, dict[Destination, int]] = {}

    def route(self, routing_key: str, headers: dict | None) -> set[Destination] | list[Destination]:
        d = self._by_key.get(routing_key)
        return d.keys() if d else ()  # type: ignore[return-value]

    def _index_add(self, b: Binding) -> None:
        # counted: the same destination may be bound twice with different arguments
        d = self._by_key.setdefault(b.routing_key, {})
        d[b.destination] = d.get(b.destination, 0) + 1

    def _index_remove(self, b: Binding) -> None:
        d = self._by_key.get(b.routing_key)
        if not d:
            return
        n = d.get(b.destination, 0) - 1
        if n > 0:
            d[b.destination] = n
        else:
            d.pop(b.destination, None)
            if not d:
                del self._by_key[b.routing_key]
