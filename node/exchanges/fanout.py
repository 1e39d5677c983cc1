"""Fanout exchange: a message goes to every bound destination, whatever its key."""

from __future__ import annotations

from node.exchanges.base import Binding, Destination, Exchange


class FanoutExchange(Exchange):
    type_name = "fanout"

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self._dests: dict[Destination, int] = {}

    def route(self, routing_key: str, headers: dict | None) -> set[Destination] | list[Destination]:
        return self._dests.keys()  # type: ignore[return-value]

    def _index_add(self, b: Binding) -> None:
        self._dests[b.destination] = self._dests.get(b.destination, 0) + 1

    def _index_remove(self, b: Binding) -> None:
        n = self._dests.get(b.destination, 0) - 1
        if n > 0:
            self._dests[b.destination] = n
        else:
            self._dests.pop(b.destination, None)
