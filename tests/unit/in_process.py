"""A broker in this test's process, on a single-node Raft of its own: for tests that drive
an AMQPConnection with a fake transport (no sockets to clients)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any, Awaitable, Callable

from node.config import Settings
from node.runtime.broker import Broker


def with_broker(tmp_path: Path, test: Callable[[Broker], Awaitable[Any]]) -> None:
    """Start a broker with its data in `tmp_path`, run `await test(broker)`, stop it."""
    async def main() -> None:
        with socket.socket() as so:
            so.bind(("127.0.0.1", 0))
            raft = f"127.0.0.1:{so.getsockname()[1]}"
        from cluster.raft import MetadataStore
        s = Settings(data_dir=str(tmp_path), raft_address=raft)
        broker = Broker(s, MetadataStore(self_address=raft, peers=[], data_dir=str(tmp_path),
                                         secret=None))
        await broker.start()
        try:
            await test(broker)
        finally:
            await broker.stop()
    asyncio.run(asyncio.wait_for(main(), 60))


def handshake(conn: Any, vhost: str = "/") -> None:
    """Feed a connection what a client sends to log in as guest, open `vhost` and open
    channel 1, one frame per read."""
    from node.amqp import spec
    from node.amqp.frames import method_frame
    conn.data_received(b"AMQP\x00\x00\x09\x01")
    for frame in (
            method_frame(0, spec.ConnectionStartOk(
                client_properties={}, mechanism="PLAIN", response=b"\x00guest\x00guest",
                locale="en_US")),
            method_frame(0, spec.ConnectionTuneOk(channel_max=2047, frame_max=131072,
                                                  heartbeat=0)),
            method_frame(0, spec.ConnectionOpen(virtual_host=vhost)),
            method_frame(1, spec.ChannelOpen())):
        conn.data_received(frame)
