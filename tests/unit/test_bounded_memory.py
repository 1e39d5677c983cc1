"""Memory a slow or hostile client can pin.  A broker in process, clients
whose transports never read what we write (as asyncio does, they ask the protocol to pause
writing past a high-water mark): the connection must stop reading such a client, a Raft
change in flight must not let a channel's backlog grow without bound, a disk slower than
the publishers must not let the store's queue grow without bound, and direct replies to a
client that never reads are dropped past a bound."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from node.amqp import spec
from node.amqp.frames import content_header_payload, encode_frame, method_frame
from node.clients import channel as channel_mod
from node.clients.connection import AMQPConnection
from node.queues import outcome as outcome_mod
from node.runtime.broker import Broker
from tests.unit.in_process import handshake, with_broker

HIGH_WATER = 64 * 1024


class NeverReadingTransport:
    """What asyncio gives a protocol whose peer never reads: writes pile up, and past the
    high-water mark the protocol is told to pause writing."""

    def __init__(self) -> None:
        self.buffered = 0
        self.reading = True
        self.protocol: Any = None
        self._pause_sent = False

    def write(self, data: bytes) -> None:
        self.buffered += len(data)
        if self.buffered > HIGH_WATER and not self._pause_sent:
            self._pause_sent = True
            self.protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None: ...
    def abort(self) -> None: ...


def open_conn(broker: Broker) -> tuple[AMQPConnection, NeverReadingTransport]:
    c = AMQPConnection(broker)
    t = NeverReadingTransport()
    t.protocol = c
    c.connection_made(t)  # type: ignore[arg-type]
    handshake(c)
    c.flush()
    return c, t


def publish(exchange: str, key: str, body: bytes, mandatory: bool = False,
            props: spec.BasicProperties | None = None) -> bytes:
    props = props or spec.BasicProperties()
    return (method_frame(1, spec.BasicPublish(exchange=exchange, routing_key=key,
                                              mandatory=mandatory))
            + encode_frame(2, 1, content_header_payload(60, len(body), props.encode()))
            + b"".join(encode_frame(3, 1, body[i:i + 100_000])
                       for i in range(0, len(body), 100_000)))


BODY = b"r" * 65536


def test_basic_returns_to_a_client_that_never_reads_stop_its_reading(tmp_path: Path) -> None:
    async def test(broker: Broker) -> None:
        conn, t = open_conn(broker)
        for _ in range(4):  # each comes back whole as basic.return
            conn.data_received(publish("", "nowhere", BODY, mandatory=True))
            await asyncio.sleep(0)
        assert t.buffered > HIGH_WATER
        assert not t.reading, "a client that reads none of its returns is still read"
    with_broker(tmp_path, test)


def test_direct_replies_to_a_client_that_never_reads_are_bounded(tmp_path: Path) -> None:
    async def test(broker: Broker) -> None:
        requester, rt = open_conn(broker)
        requester.data_received(method_frame(1, spec.BasicConsume(
            queue="amq.rabbitmq.reply-to", no_ack=True)))
        ch = requester.channels[1]
        address = "amq.rabbitmq.reply-to." + ch.reply_key
        responder, _ = open_conn(broker)
        for _ in range(200):  # 12.8 MB of replies
            responder.data_received(publish("", address, BODY))
            await asyncio.sleep(0)
        assert rt.buffered <= channel_mod.REPLY_TO_MAX_BUFFERED + 2 * len(BODY), rt.buffered
    with_broker(tmp_path, test)


def test_a_channel_waiting_for_raft_stops_reading_its_client(tmp_path: Path) -> None:
    async def test(broker: Broker) -> None:
        gate = asyncio.Event()
        real_submit = broker.definitions.submit

        async def slow_submit(command: dict) -> dict:
            await gate.wait()  # a Raft change that takes its time
            return await real_submit(command)

        broker.definitions.submit = slow_submit  # type: ignore[method-assign]
        conn, t = open_conn(broker)
        conn.data_received(method_frame(1, spec.QueueDeclare(queue="waits", durable=True)))
        for _ in range(40):  # 2.6 MB queued behind the declare
            conn.data_received(publish("", "waits", BODY))
        assert not t.reading, "the backlog behind a Raft change is read without bound"
        gate.set()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if t.reading:
                break
        assert t.reading, "reading did not resume once the backlog drained"
        assert broker.runtime.vhosts["/"].queues["waits"].message_count == 40
    with_broker(tmp_path, test)


def test_a_slow_disk_stops_reading_persistent_publishers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outcome_mod, "STORE_PENDING_MAX_BYTES", 1 << 20)

    async def test(broker: Broker) -> None:
        conn, t = open_conn(broker)
        conn.data_received(method_frame(1, spec.QueueDeclare(queue="disk", durable=True)))
        await asyncio.sleep(0.2)
        store = broker.runtime.vhosts["/"].store
        assert store is not None
        real_commit = store._commit

        def slow_commit(*args: Any) -> None:
            time.sleep(0.3)  # a slow disk
            real_commit(*args)

        monkeypatch.setattr(store, "_commit", slow_commit)
        persistent = spec.BasicProperties(delivery_mode=2)
        for _ in range(40):  # 2.6 MB, no confirms
            conn.data_received(publish("", "disk", BODY, props=persistent))
        assert not t.reading, "publishers are read while the store's queue grows"
        for _ in range(300):
            await asyncio.sleep(0.01)
            if t.reading:
                break
        assert t.reading and store.pending_bytes < (1 << 20)
    with_broker(tmp_path, test)


def test_a_held_client_is_read_again_only_when_every_reason_is_gone(tmp_path: Path) -> None:
    """The move holds its vhost's clients: an alarm that clears, a flow-control timeout, a
    store that caught up or the socket draining must not resume one of them mid-move."""
    async def test(broker: Broker) -> None:
        conn, t = open_conn(broker)
        conn.publisher = True
        conn.hold_reading("move")
        assert not t.reading
        conn.alarm_raised({"disk"})
        conn.alarm_cleared()
        class Queue:  # what flow control needs of a queue
            flow_blocked: set = set()
        conn.flow_pause(Queue())
        conn._flow_timeout()
        conn.hold_reading("store")
        conn.release_reading("store")
        conn.pause_writing()
        conn.resume_writing()
        assert not t.reading, "something resumed a client that the move holds"
        assert conn.read_holds == {"move"}
        conn.release_reading("move")
        assert t.reading
    with_broker(tmp_path, test)
