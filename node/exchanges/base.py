"""What every exchange type shares: its declared attributes and its bindings.

A binding's destination is a `Destination` (kind, name) with kind "queue" or "exchange".
Subclasses keep their own index of the bindings for routing and implement `route`."""

from __future__ import annotations

from typing import NamedTuple


class Destination(NamedTuple):
    kind: str  # "queue" or "exchange"
    name: str


class Binding(NamedTuple):
    source: str
    destination: Destination
    routing_key: str
    arguments: dict

    def key(self) -> tuple:
        return (self.destination, self.routing_key, _freeze(self.arguments))


def _freeze(value: object) -> object:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


class Exchange:
    type_name = ""

    def __init__(self, vhost: str, name: str, durable: bool = False, auto_delete: bool = False,
                 internal: bool = False, arguments: dict | None = None) -> None:
        self.vhost = vhost
        self.name = name
        self.durable = durable
        # its definition is in Raft (every durable one; every one of a sharded vhost)
        self.in_raft = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = arguments or {}
        self.bindings: dict[tuple, Binding] = {}
        self.alternate: str | None = None  # alternate-exchange, from argument or policy
        # message_stats publish_in / publish_out (management API), counted by channels
        self.stats_publish_in = 0
        self.stats_publish_out = 0

    # --- bindings -------------------------------------------------------------------
    def add_binding(self, b: Binding) -> bool:
        k = b.key()
        if k in self.bindings:
            return False
        self.bindings[k] = b
        self._index_add(b)
        return True

    def remove_binding(self, b: Binding) -> bool:
        old = self.bindings.pop(b.key(), None)
        if old is None:
            return False
        self._index_remove(old)
        return True

    def remove_destination(self, dest: Destination) -> list[Binding]:
        gone = [b for b in self.bindings.values() if b.destination == dest]
        for b in gone:
            self.remove_binding(b)
        return gone

    def has_binding(self, b: Binding) -> bool:
        return b.key() in self.bindings

    # --- routing, per type ------------------------------------------------------------
    def route(self, routing_key: str, headers: dict | None) -> set[Destination] | list[Destination]:
        raise NotImplementedError

    def _index_add(self, b: Binding) -> None:
        raise NotImplementedError

    def _index_remove(self, b: Binding) -> None:
        raise NotImplementedError
