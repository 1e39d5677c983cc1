"""Per-message cost of the broker's hot path, in process, without sockets (never collected
by pytest): a publishing connection and an auto-ack consumer on one queue, fed pre-encoded
frames, with transports that swallow what they are given.

usage: python3 tests/bench/hotpath.py [--messages 200000] [--size 16] [--profile]"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from node.amqp import spec  # noqa: E402
from node.amqp.connection import AMQPConnection  # noqa: E402
from node.amqp.frames import content_header_payload, encode_frame, method_frame  # noqa: E402
from node.broker import Broker  # noqa: E402
from node.config import Settings  # noqa: E402


class SinkTransport:
    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)

    def writelines(self, parts) -> None:
        for p in parts:
            self.bytes += len(p)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


def open_conn(broker: Broker) -> AMQPConnection:
    c = AMQPConnection(broker)
    c.connection_made(SinkTransport())  # type: ignore[arg-type]
    c.data_received(b"AMQP\x00\x00\x09\x01")
    c.data_received(method_frame(0, spec.ConnectionStartOk(
        client_properties={}, mechanism="PLAIN", response=b"\x00guest\x00guest",
        locale="en_US")))
    c.data_received(method_frame(0, spec.ConnectionTuneOk(channel_max=2047,
                                                          frame_max=131072, heartbeat=0)))
    c.data_received(method_frame(0, spec.ConnectionOpen(virtual_host="/")))
    c.data_received(method_frame(1, spec.ChannelOpen()))
    return c


async def main(n: int, size: int, profile: bool) -> None:
    with tempfile.TemporaryDirectory() as d:
        from cluster.raft import MetadataStore
        s = Settings(data_dir=d, raft_address="127.0.0.1:0")
        import socket
        with socket.socket() as so:
            so.bind(("127.0.0.1", 0))
            s.raft_address = f"127.0.0.1:{so.getsockname()[1]}"
        md = MetadataStore(self_address=s.raft_address, peers=[], data_dir=d, secret=None)
        broker = Broker(s, md)
        await broker.start()
        pub, sub = open_conn(broker), open_conn(broker)
        sub.data_received(method_frame(1, spec.QueueDeclare(queue="hp")))
        sub.data_received(method_frame(1, spec.BasicConsume(queue="hp", no_ack=True)))
        body = b"x" * size
        one = (method_frame(1, spec.BasicPublish(exchange="", routing_key="hp"))
               + encode_frame(2, 1, content_header_payload(60, size,
                                                           spec.BasicProperties().encode()))
               + encode_frame(3, 1, body))
        chunk = one * max(1, 65536 // len(one))
        per_chunk = chunk.count(b"\xce") // 3
        chunks = n // per_chunk
        await asyncio.sleep(0)
        prof = cProfile.Profile() if profile else None
        t = time.perf_counter()
        if prof:
            prof.enable()
        for _ in range(chunks):
            pub.data_received(chunk)
            sub.flush()
        if prof:
            prof.disable()
        dt = time.perf_counter() - t
        total = chunks * per_chunk
        print(f"{total} messages of {size} B published and delivered in {dt:.2f} s: "
              f"{total / dt:,.0f} msg/s, {dt / total * 1e6:.2f} us/msg "
              f"(delivered {sub.transport.bytes:,} bytes)")
        if prof:
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        await broker.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=200000)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--profile", action="store_true")
    a = p.parse_args()
    asyncio.run(main(a.messages, a.size, a.profile))
