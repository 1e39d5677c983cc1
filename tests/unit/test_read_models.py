"""Queues, channels, connections and vhosts show the management plane and
the metrics their figures through one read model each (node/read_models.py), and node/http
reads nothing private: no `obj._field`, no `getattr(obj, "_field")`, no transport."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from node.amqp import spec
from node.amqp.frames import content_header_payload
from node.amqp.message import Message
from node.clients.channel import Channel
from node.clients.connection import AMQPConnection
from node.queues.consumer import Consumer
from node.queues.queue import Queue
from node.read_models import TLSSession
from node.vhost import VirtualHost

HTTP = Path(__file__).resolve().parents[2] / "node" / "http"
# what only the connection's own read model may touch: the socket and its buffers
TRANSPORT_NAMES = {"transport", "get_extra_info", "get_write_buffer_size"}


def private_reads(source: str) -> list[str]:
    """Every place `source` reaches into another object's insides."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            name = node.attr
            mine = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if name.startswith("_") and not name.startswith("__") and not mine:
                found.append(f"{node.lineno}: .{name}")
            elif name in TRANSPORT_NAMES:
                found.append(f"{node.lineno}: .{name}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str)
              and (node.args[1].value.startswith("_")
                   or node.args[1].value in TRANSPORT_NAMES)):
            found.append(f"{node.lineno}: {node.func.id}(…, {node.args[1].value!r})")
    return found


def test_the_scan_sees_what_node_http_used_to_do() -> None:
    old = '''
ready = getattr(q, "_ready", None)
sac = q._active_consumer()
pend = c.transport.get_write_buffer_size()
ok = hasattr(ch, "_busy")
mine = self._rates
dunder = spec.BasicProperties.__slots__
'''
    assert sorted(private_reads(old)) == [
        "2: getattr(…, '_ready')", "3: ._active_consumer", "4: .get_write_buffer_size",
        "4: .transport", "5: hasattr(…, '_busy')"]


def test_node_http_reads_nothing_private() -> None:
    offenders = [f"node/http/{path.name}:{where}" for path in sorted(HTTP.glob("*.py"))
                 for where in private_reads(path.read_text())]
    assert not offenders, ("node/http reads private fields or transports; expose the "
                           "figure through the object's stats() (node/read_models.py): "
                           f"{offenders}")


# --- the read models' figures ------------------------------------------------------------
class PagingStore:
    """The part of storage.store.MessageStore a queue pages to."""

    def __init__(self) -> None:
        self.rows: dict[int, bytes] = {}

    def put(self, queue: str, seq: int, record: bytes) -> None:
        self.rows[seq] = record

    def read_range(self, queue: str, start: int, n: int) -> list[tuple[int, bytes, bool]]:
        return [(s, r, False) for s, r in sorted(self.rows.items()) if s >= start][:n]

    def delete(self, queue: str, seq: int) -> None:
        self.rows.pop(seq, None)

    def mark_delivered(self, queue: str, seq: int) -> None: ...


class Holder:
    """A consumer owner that takes nothing, so messages stay ready."""

    def can_deliver(self, consumer: Consumer) -> bool:
        return False

    def deliver(self, consumer: Consumer, queue: Queue, entry: Any) -> None: ...

    def cancel_consumers_of(self, queue: Queue) -> None: ...


def message(body: bytes, timestamp: int | None = None) -> Message:
    props = spec.BasicProperties(timestamp=timestamp)
    return Message.from_publish("", "q", content_header_payload(60, len(body), props.encode()),
                                body)


def test_queue_stats_count_memory_and_store_apart() -> None:
    store = PagingStore()
    q = Queue("/", "q", arguments={"x-single-active-consumer": True}, store=store,
              memory_limit=2000)
    assert q.stats().head_message_timestamp is None
    q.publish(message(b"head", timestamp=1_700_000_000))
    for _ in range(2002):
        q.publish(message(b"xy"))
    s = q.stats()
    assert (s.messages_ready, s.messages_ready_ram, s.messages_paged_out) == (2003, 2000, 3)
    assert s.message_bytes_ready_ram == 4 + 1999 * 2
    assert s.message_bytes_paged_out == sum(len(r) for r in store.rows.values())
    assert s.message_bytes_ready == s.message_bytes_ready_ram + s.message_bytes_paged_out
    assert s.head_message_timestamp == 1_700_000_000
    assert s.single_active_consumer is None and s.consumers == ()
    first, second = (Consumer(t, q, Holder(), False, False, 0) for t in ("a", "b"))
    q.add_consumer(first)
    q.add_consumer(second)
    s = q.stats()
    assert s.consumers == (first, second) and s.single_active_consumer is first
    assert s.exclusive_consumer is None


def test_vhost_and_connection_and_channel_stats() -> None:
    async def main() -> None:
        settings = SimpleNamespace(channel_max=2047, frame_max=131072, heartbeat=60,
                                   max_message_size=1 << 20)
        broker: Any = SimpleNamespace(settings=settings,
                                      runtime=SimpleNamespace(connections=set()),
                                      counters=SimpleNamespace(connections_opened=0),
                                      server_properties=lambda capabilities: {})
        vh = VirtualHost("v", None)
        q = vh.add_queue("q")
        q.publish(message(b"abc"))
        conn = AMQPConnection(broker)
        assert conn.stats().state == "starting" and conn.stats().host is None
        conn.user, conn.vhost = "guest", vh
        conn.channels[1] = ch = Channel(conn, 1)
        vh.connections.add(conn)
        conn.recv_bytes, conn.send_bytes = 10, 20

        cs = conn.stats()
        assert (cs.vhost, cs.channels, cs.send_pending, cs.tls_session) == ("v", (ch,), 0, None)
        assert (cs.recv_bytes, cs.send_bytes, cs.ssl) == (10, 20, False)
        chs = ch.stats()
        assert (chs.number, chs.user, chs.vhost, chs.state) == (1, "guest", "v", "running")
        assert (chs.messages_unacknowledged, chs.transactional, chs.pending_raft_commands) == (
            0, False, 0)
        assert ch.unacked_bytes() == {}
        vs = vh.stats()
        assert (vs.queues, vs.connections, vs.messages_ready, vs.recv_bytes) == (1, 1, 1, 10)
        assert len(vh.exchanges) == vs.exchanges

        conn.transport = TLSTransport()  # type: ignore[assignment]
        conn.tls_peer_name = "client-1"
        cs = conn.stats()
        assert (cs.host, cs.port, cs.send_pending) == ("10.0.0.1", 5671, 42)
        assert cs.tls_session == TLSSession("TLSv1.3", "TLS_AES_256_GCM_SHA384", "client-1")
    asyncio.run(main())


class TLSTransport:
    class SSLObject:
        def version(self) -> str:
            return "TLSv1.3"

        def cipher(self) -> tuple[str, str, int]:
            return ("TLS_AES_256_GCM_SHA384", "TLSv1.3", 256)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("10.0.0.1", 5671), "ssl_object": self.SSLObject()}.get(name)

    def get_write_buffer_size(self) -> int:
        return 42
