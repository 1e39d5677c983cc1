"""A virtual host's runtime: its exchanges, queues and bindings, routing across them, and
its message store.  Definitions arrive here already decided (from the Raft log for durable
things, directly for transient and exclusive ones); this module only applies them."""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any, Callable

from node.amqp.message import FLAG_HEADERS, Message, now_ms
from node.exchanges.base import Binding, Destination, Exchange
from node.exchanges.registry import EXCHANGE_TYPES, STANDARD_EXCHANGES
from node.policies import matching_policy
from node.queues import types
from node.queues.dead_letter import dead_lettered, death_cycle
from node.queues.outcome import PublishOutcome, publish_to
from node.queues.queue import Queue
from node.read_models import VhostStats

if TYPE_CHECKING:
    from storage.store import MessageStore

log = logging.getLogger(__name__)

_OWN_STORE = object()  # add_queue's default: the vhost's own store
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
        # the stores of the shards this node runs, by unit key (the vhost's own included)
        self.unit_stores: dict[str, "MessageStore"] = {}
        if store is not None:
            self.unit_stores[name] = store
        self.policies: dict[str, dict] = {}
        self.limits: dict[str, int] = {}
        # stats_* counters of deleted queues and exchanges, so that vhost and node totals
        # (management API, Prometheus *_total) never go backwards
        self.retired_stats: dict[str, int] = {}
        for ex_name, ex_type, internal in STANDARD_EXCHANGES:
            self.add_exchange(ex_name, ex_type, durable=True, internal=internal)

    # --- exchanges ------------------------------------------------------------------
    def add_exchange(self, name: str, type_name: str, durable: bool = False,
                     auto_delete: bool = False, internal: bool = False,
                     arguments: dict | None = None) -> Exchange:
        ex = self.exchanges.get(name)
        if ex is None:
            ex = EXCHANGE_TYPES[type_name](self.name, name, durable, auto_delete, internal,
                                           arguments)
            self._apply_exchange_policy(ex)
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
                  recover: bool = False, declaration: str | None = None,
                  unit: str | None = None, store: Any = _OWN_STORE,
                  in_raft: bool | None = None) -> Queue:
        """The queue `name` (created if missing).  `declaration`: the id Raft records for a
        durable queue's declaration (node/queues/queue.py store_key); None for the queues
        Raft never sees.  `unit` and `store`: the shard that holds it and that shard's
        store here (None where another node runs the shard); by default the vhost's own."""
        q = self.queues.get(name)
        if q is None:
            policy = matching_policy(self.policies, "queue", name,
                                     types.queue_type(arguments or {}))
            q = Queue(self.name, name, durable=durable, exclusive_owner=exclusive_owner,
                      auto_delete=auto_delete, arguments=arguments,
                      store=self.store if store is _OWN_STORE else store, unit=unit,
                      in_raft=in_raft,
                      memory_limit=self.memory_limit, on_unused=self.on_queue_unused,
                      dead_letter=self.dead_letter,
                      policy=policy["definition"] if policy else None, declaration=declaration)
            q.policy_name = policy["name"] if policy else None
            self.queues[name] = q
            if durable and recover:
                q.recover()  # in the background: the queue says when (wait_for)
        return q

    def remove_queue(self, name: str) -> Queue | None:
        q = self.queues.pop(name, None)
        if q is None:
            return None
        q.close()  # stops its TTL and expiry timers: they must not touch a successor's data
        self._retire(q)
        dest = Destination("queue", name)
        for ex in list(self.exchanges.values()):
            if ex.remove_destination(dest):
                self._after_unbind(ex)
        if q.store is not None:
            q.store.delete_queue(q.store_key)
        return q

    def store_keys(self, unit: str | None = None) -> set[str]:
        """The store keys of the queues this vhost has now (of one shard's, given its unit
        key): any other queue key in that store holds messages of a deleted queue."""
        unit = self.name if unit is None else unit
        return {q.store_key for q in self.queues.values() if q.unit == unit}

    def detach_queue(self, name: str) -> Queue | None:
        """Take a queue out of this runtime without touching its stored messages or its
        bindings (its shard changed owner: the queue is rebuilt on the other side)."""
        q = self.queues.pop(name, None)
        if q is not None:
            q.close()
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

    # --- policies -------------------------------------------------------------------
    def apply_policies(self, policies: dict[str, dict]) -> None:
        """Policies changed: re-derive every queue's and exchange's effective settings."""
        self.policies = policies
        for q in self.queues.values():
            p = matching_policy(policies, "queue", q.name, q.settings.queue_type)
            q.apply_policy(p["name"] if p else None, p["definition"] if p else None)
        for ex in self.exchanges.values():
            self._apply_exchange_policy(ex)

    def _apply_exchange_policy(self, ex: Exchange) -> None:
        p = matching_policy(self.policies, "exchange", ex.name) if ex.name else None
        ae = ex.arguments.get("alternate-exchange")  # the argument wins over the policy
        if ae is None and p is not None:
            ae = p["definition"].get("alternate-exchange")
        if isinstance(ae, (bytes, bytearray)):
            ae = bytes(ae).decode("utf-8", "replace")
        ex.alternate = ae or None  # type: ignore[attr-defined]

    # --- publishing -----------------------------------------------------------------
    def publish(self, exchange: Exchange, message: Message) -> PublishOutcome:
        """Route ``message`` from ``exchange`` and enqueue it in every queue it reaches:
        the one way a message enters the vhost (basic.publish, the management API's
        publish and dead-lettering all come here)."""
        if exchange.name == "" and not message.flags & FLAG_HEADERS:
            # the default exchange without CC/BCC: the queue named by the routing key
            q = self.queues.get(message.routing_key)
            queues = [q] if q is not None else []
            exchange.stats_publish_in += 1
            exchange.stats_publish_out += len(queues)
        else:
            queues = self.route(exchange, message)
            if queues and b"BCC" in message.header and "BCC" in message.headers:
                message = _without_bcc(message)  # sender-selected distribution: BCC never
                # reaches a consumer
        return publish_to(queues, message)

    # --- routing --------------------------------------------------------------------
    def route(self, exchange: Exchange, message: Message) -> list[Queue]:
        """The queues a message published to `exchange` reaches, as RabbitMQ's
        rabbit_exchange:route/2 finds them: every exchange on the way routes with all the
        message's keys (routing key plus sender-selected CC/BCC), exchange-to-exchange
        bindings are followed with each exchange visited once (cycles end), and each
        exchange that itself matched no binding falls back to its own alternate exchange."""
        keys = None
        if message.flags & FLAG_HEADERS and b"CC" in message.header:
            h = message.headers
            extra = _key_list(h.get("CC")) + _key_list(h.get("BCC"))
            if extra:
                keys = [message.routing_key] + extra
        if exchange.name == "":
            out = self._route_default(message, keys)
        else:
            out = self._route_graph(exchange, message, keys)
        exchange.stats_publish_in += 1  # management API: the exchange's message_stats
        exchange.stats_publish_out += len(out)
        return out

    def _route_default(self, message: Message, keys: list[str] | None) -> list[Queue]:
        """The default exchange: the queue each key names (it has no alternate)."""
        queues = self.queues
        out: list[Queue] = []
        for k in keys if keys is not None else (message.routing_key,):
            q = queues.get(k)
            if q is not None and q not in out:
                out.append(q)
        return out

    def _route_graph(self, exchange: Exchange, message: Message,
                     keys: list[str] | None) -> list[Queue]:
        queues = self.queues
        exchanges = self.exchanges
        routing_key = message.routing_key
        headers = message.headers if exchange.type_name == "headers" else None
        out: list[Queue] = []
        seen_q: set[str] = set()
        seen_x = {exchange.name}
        pending: list[Exchange] = []
        ex = exchange
        hops = 0
        while True:
            if keys is None:
                dests = ex.route(routing_key, headers)
            else:
                dests = set()
                for k in keys:
                    dests.update(ex.route(k, headers))
            if dests:
                for d in dests:
                    if d.kind == "queue":
                        if d.name not in seen_q:
                            seen_q.add(d.name)
                            q = queues.get(d.name)
                            if q is not None:
                                out.append(q)
                    elif d.name not in seen_x:
                        seen_x.add(d.name)
                        nxt = exchanges.get(d.name)
                        if nxt is not None:
                            pending.append(nxt)
            else:
                # this exchange matched nothing: its own alternate exchange, if any, takes
                # the message (an exchange that routed to another exchange matched something,
                # even if that one routes nowhere)
                ae = ex.alternate
                if ae and ae not in seen_x:
                    seen_x.add(ae)
                    nxt = exchanges.get(ae)
                    if nxt is not None:
                        pending.append(nxt)
            if not pending or hops >= MAX_E2E_HOPS:
                return out
            ex = pending.pop()
            hops += 1
            if headers is None and ex.type_name == "headers":
                headers = message.headers

    # --- dead-lettering ----------------------------------------------------------------
    def dead_letter(self, q: Queue, message: Message, reason: str) -> None:
        """Republish a message that died in `q` to its dead-letter exchange (at most once,
        as RabbitMQ's classic queues do: no confirm is awaited)."""
        s = q.settings
        ex = self.exchanges.get(s.dead_letter_exchange or "")
        if ex is None:
            return  # a missing DLX silently drops, as in RabbitMQ
        try:
            dl = dead_lettered(message, q.name, reason, ex.name, s.dead_letter_routing_key,
                               now_ms() // 1000)
        except Exception:  # a malformed message must not fail whoever triggered the death
            log.exception("cannot dead-letter a message from queue '%s' in vhost '%s'",
                          q.name, self.name)
            return
        targets = [t for t in self.route(ex, dl) if not death_cycle(dl, t.name)]
        publish_to(targets, dl)

    # --- read model (management API, metrics) ---
    def stats(self) -> VhostStats:
        """Totals over the vhost's queues and open connections now (node/read_models.py)."""
        ready = unacked = 0
        for q in list(self.queues.values()):
            ready += q.message_count
            unacked += q.unacked
        conns = [c.stats() for c in list(self.connections)]
        return VhostStats(
            queues=len(self.queues), exchanges=len(self.exchanges), connections=len(conns),
            messages_ready=ready, messages_unacknowledged=unacked,
            recv_bytes=sum(c.recv_bytes for c in conns),
            send_bytes=sum(c.send_bytes for c in conns))


def _without_bcc(msg: Message) -> Message:
    props = copy.copy(msg.properties)
    headers = dict(props.headers or {})
    headers.pop("BCC", None)
    props.headers = headers
    out = msg.with_properties(props)
    out.published_at = msg.published_at
    return out


def _key_list(v: object) -> list[str]:
    if not isinstance(v, (list, tuple)):
        return []
    return [x.decode("utf-8", "replace") if isinstance(x, (bytes, bytearray)) else str(x)
            for x in v]
