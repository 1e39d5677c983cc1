"""The asyncio adapter (node/clients/connection.py) around the protocol core, with a broker in
process and a transport that records what it is told: the decisions that involve the socket
(aborting, pausing, handing a client over) as the core's review found them wanting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from node.amqp import protocol, spec
from node.amqp.frames import method_frame
from node.clients.connection import AMQPConnection
from node.runtime.broker import Broker
from tests.unit.in_process import with_broker


class RecordingTransport:
    def __init__(self) -> None:
        self.data = bytearray()
        self.reading = True
        self.aborted = False
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


def connect(broker: Broker) -> tuple[AMQPConnection, RecordingTransport]:
    c = AMQPConnection(broker)
    t = RecordingTransport()
    c.connection_made(t)  # type: ignore[arg-type]
    return c, t


def test_a_close_before_the_protocol_header_drops_the_socket(tmp_path: Path) -> None:
    async def test(broker: Broker) -> None:
        c, t = connect(broker)
        c.force_close(320, "node is stopping")
        assert t.aborted  # not left to the 10 s handshake timeout
    with_broker(tmp_path, test)


def test_a_client_closed_while_being_handed_over_stays_closed(tmp_path: Path) -> None:
    # the owner is being reached when the user is deleted (or the node stops): the close
    # stands, the client is read again for its close-ok, and no splice is made
    async def test(broker: Broker) -> None:
        c, t = connect(broker)
        c.data_received(b"AMQP\x00\x00\x09\x01")
        c.data_received(method_frame(0, spec.ConnectionStartOk(
            mechanism="PLAIN", response=b"\x00guest\x00guest")))
        c.data_received(method_frame(0, spec.ConnectionTuneOk(frame_max=131072)))
        broker.runtime.owns = lambda vhost: False  # type: ignore[method-assign]
        broker.runtime.owner_of = lambda vhost: "n2"  # type: ignore[method-assign]
        broker.runtime.nodes["n2"] = {"forward": "127.0.0.1:9"}
        broker.settings.cluster_secret = "s"
        c.spawn = lambda coro: coro.close()  # type: ignore[method-assign]  # no real hand-over
        c.data_received(method_frame(0, spec.ConnectionOpen(virtual_host="/"))
                        + method_frame(1, spec.ChannelOpen()))
        assert c.core.state == protocol.OPENING and not t.reading
        c.force_close(320, "user 'guest' was deleted")
        assert c.detach() is None
        assert t.reading and c.transport is t and c.core.state == protocol.CLOSING
        c.data_received(method_frame(0, spec.ConnectionCloseOk()))
        assert t.closed
    with_broker(tmp_path, test)
