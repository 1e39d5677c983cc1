"""A virtual host's runtime: its exchanges, queues and bindings, routing across them, and
its message store.  Definitions arrive here already decided (from the Raft log for durable
things, directly for transient and exclusive ones); this module only applies them."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from node.exchanges.base import Binding, Destination, Exchange
from node.exchanges.registry import EXCHANGE_TYPES, STANDARD_EXCHANGES
from node.message import Message
from node.queues.queue import Queue

if TYPE_CHECKING:
    from storage.store import MessageStore

log = logging.getLogger(__name__)

MAX_E2E_HOPS = 64  # exchange-to-exchange routing depth; cycles are cut by the visited set


class VirtualHost:
    def __init__(self, name: str, store: "MessageStore | None", memory_limit: int = 20000,
                 on_queue_unused: Callable[[Queue], None] | None = None,
                 on_exchange_unused: Callable[[Exchange], None] | None = None) -> None:
        self.name = name
        self.store = store
        self.memory_limit = memory_limit
        self.on_queue_unused = on_queue_unused
        self.on_exchange_unused = on_exchange_unused
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, Queue] = {}
        self.connections: set[Any] = set()
        # stats_* counters of deleted queues and exchanges, so that vhost and node totals
        # (management API, Prometheus *_total) never go backwards
        self.retired_stats: dict[str, int] = {}
        for ex_name, ex_type in STANDARD_EXCHANGES:
            self.add_exchange(ex_name, ex_type, durable=True)

    # --- exchanges ------------------------------------------------------------------
    def add_exchange(self, name: str, type_name: str, durable: bool = False,
                     auto_delete: bool = False, internal: bool = False,
                     arguments: dict | None = None) -> Exchange:
        ex = self.exchanges.get(name)
        if ex is None:
            ex = EXCHANGE_TYPES[type_name](self.name, name, durable, auto_delete, internal,
                                           arguments)
            self.exchanges[name] = ex
        return ex

    def remove_exchange(self, name: str) -> None:
        ex = self.exchanges.pop(name, None)
        if ex is None:
            return
        self._retire(ex)
        dest = Destination("exchange", name)
        for other in list(self.exchanges.values()):
            if other.remove_destination(dest):
                self._after_unbind(other)

    # --- queues ---------------------------------------------------------------------
    def add_queue(self, name: str, durable: bool = False, exclusive_owner: Any = None,
                  auto_delete: bool = False, arguments: dict | None = None,
                  recover: bool = False) -> Queue:
        q = self.queues.get(name)
        if q is None:
            q = Queue(self.name, name, durable=durable, exclusive_owner=exclusive_owner,
                      auto_delete=auto_delete, arguments=arguments, store=self.store,
                      memory_limit=self.memory_limit, on_unused=self.on_queue_unused)
            self.queues[name] = q
            if durable and recover:
                n = q.recover()
                if n:
                    log.info("recovered %d messages in queue '%s' in vhost '%s'", n, name,
                             self.name)
        return q

    def remove_queue(self, name: str) -> Queue | None:
        q = self.queues.pop(name, None)
        if q is None:
            return None
        q.deleted = True
        self._retire(q)
        dest = Destination("queue", name)
        for ex in list(self.exchanges.values()):
            if ex.remove_destination(dest):
                self._after_unbind(ex)
        if q.store is not None:
            q.store.delete_queue(name)
        return q

    def _retire(self, obj: Any) -> None:
        totals = self.retired_stats
        for key, value in vars(obj).items():
            if key.startswith("stats_"):
                totals[key] = totals.get(key, 0) + value

    # --- bindings -------------------------------------------------------------------
    def bind(self, source: str, dest: Destination, routing_key: str, arguments: dict) -> bool:
        ex = self.exchanges.get(source)
        if ex is None:
            return False
        return ex.add_binding(Binding(source, dest, routing_key, arguments))

    def unbind(self, source: str, dest: Destination, routing_key: str, arguments: dict) -> bool:
        ex = self.exchanges.get(source)
        if ex is None:
            return False
        removed = ex.remove_binding(Binding(source, dest, routing_key, arguments))
        if removed:
            self._after_unbind(ex)
        return removed

    def _after_unbind(self, ex: Exchange) -> None:
        # RabbitMQ: an auto-delete exchange goes when its last binding as source goes
        if (ex.auto_delete and not ex.bindings and ex.name in self.exchanges
                and self.on_exchange_unused is not None):
            self.on_exchange_unused(ex)

    def bindings(self) -> list[Binding]:
        out: list[Binding] = []
        for ex in self.exchanges.values():
            out.extend(ex.bindings.values())
        return out

    # --- routing --------------------------------------------------------------------
    def route(self, exchange: Exchange, message: Message) -> list[Queue]:
        """The queues a message published to `exchange` reaches, following exchange-to-
        exchange bindings; each queue at most once, cycles cut."""
        queues = self.queues
        if exchange.name == "":
            q = queues.get(message.routing_key)
            return [q] if q is not None else []
        headers = message.headers if exchange.type_name == "headers" else None
        dests = exchange.route(message.routing_key, headers)
        if not dests:
            return []
        out: list[Queue] = []
        seen_q: set[str] = set()
        seen_x = {exchange.name}
        stack = [dests]
        hops = 0
        while stack:
            for d in stack.pop():
                if d.kind == "queue":
                    if d.name not in seen_q:
                        seen_q.add(d.name)
                        q = queues.get(d.name)
                        if q is not None:
                            out.append(q)
                elif d.name not in seen_x and hops < MAX_E2E_HOPS:
                    seen_x.add(d.name)
                    hops += 1
                    ex = self.exchanges.get(d.name)
                    if ex is not None:
                        if ex.type_name == "headers" and headers is None:
                            headers = message.headers
                        stack.append(ex.route(message.routing_key, headers))
        return out
