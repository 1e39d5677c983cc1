"""Per-message cost of the broker's hot path, in process, without sockets (never collected
by pytest): a publishing connection and an auto-ack consumer on one queue, fed pre-encoded
frames, with transports that keep what they are given.

The publisher's stream is fed in reads of random sizes (as a socket delivers it: frames cut
anywhere), unless --aligned feeds whole, frame-aligned 64 KiB chunks (the best case).  The
count of messages comes from the protocol: the basic.deliver frames the consumer got; a
run that delivered fewer than it published fails.

--persistent publishes persistent messages to a durable queue (each one written to the
store), --confirm puts the publisher's channel in confirm mode.

usage: python3 tests/bench/hotpath.py [--messages 200000] [--size 16] [--aligned] [--profile]
                                      [--persistent] [--confirm]"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from node.amqp import spec  # noqa: E402
from node.amqp.frames import content_header_payload, encode_frame, method_frame  # noqa: E402
from node.clients.connection import AMQPConnection  # noqa: E402
from node.config import Settings  # noqa: E402
from node.runtime.broker import Broker  # noqa: E402
from tests.unit.in_process import handshake  # noqa: E402


class SinkTransport:
    def __init__(self) -> None:
        self.data = bytearray()

    @property
    def bytes(self) -> int:
        return len(self.data)

    def write(self, data: bytes) -> None:
        self.data += data

    def writelines(self, parts) -> None:
        for p in parts:
            self.data += p

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


BASIC_DELIVER = struct.pack(">HH", 60, 60)


def count_deliveries(stream: bytes | bytearray) -> int:
    """basic.deliver method frames in what the broker wrote (frame by frame)."""
    pos, n, found = 0, len(stream), 0
    while pos + 7 <= n:
        ftype = stream[pos]
        size = int.from_bytes(stream[pos + 3:pos + 7], "big")
        if ftype == 1 and stream[pos + 7:pos + 11] == BASIC_DELIVER:
            found += 1
        pos += size + 8
    return found


def reads(stream: bytes, rng: random.Random) -> list[bytes]:
    """The stream cut where a socket might cut it: reads of 1 byte to 64 KiB."""
    out, pos = [], 0
    while pos < len(stream):
        step = rng.choice((rng.randint(1, 64), rng.randint(1, 4096), rng.randint(1, 65536)))
        out.append(stream[pos:pos + step])
        pos += step
    return out


def open_conn(broker: Broker) -> AMQPConnection:
    c = AMQPConnection(broker)
    c.connection_made(SinkTransport())  # type: ignore[arg-type]
    handshake(c)
    return c


async def main(n: int, size: int, profile: bool, aligned: bool, persistent: bool = False,
               confirm: bool = False) -> None:
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
        sub.data_received(method_frame(1, spec.QueueDeclare(queue="hp", durable=persistent)))
        if confirm:
            pub.data_received(method_frame(1, spec.ConfirmSelect()))
        sub.data_received(method_frame(1, spec.BasicConsume(queue="hp", no_ack=True)))
        for _ in range(500):  # a durable declare goes through Raft first
            q = broker.runtime.vhosts["/"].queues.get("hp")
            if q is not None and q.consumers:
                break
            await asyncio.sleep(0.01)
        body = b"x" * size
        one = (method_frame(1, spec.BasicPublish(exchange="", routing_key="hp"))
               + encode_frame(2, 1, content_header_payload(60, size,
                                                           spec.BasicProperties(
                                                               delivery_mode=2 if persistent
                                                               else None).encode()))
               + encode_frame(3, 1, body))
        per_chunk = max(1, 65536 // len(one))
        total = max(n // per_chunk, 1) * per_chunk
        if aligned:
            feed = [one * per_chunk] * (total // per_chunk)
        else:
            feed = reads(one * total, random.Random(1))
        sub.transport.data.clear()
        await asyncio.sleep(0)
        prof = cProfile.Profile() if profile else None
        t = time.perf_counter()
        if prof:
            prof.enable()
        for data in feed:
            pub.data_received(data)
            sub.flush()
        if prof:
            prof.disable()
        dt = time.perf_counter() - t
        delivered = count_deliveries(sub.transport.data)
        print(f"{total} messages of {size} B published, {delivered} delivered in {dt:.2f} s "
              f"({'aligned 64 KiB chunks' if aligned else f'{len(feed)} reads of random size'}"
              f"): {delivered / dt:,.0f} msg/s, {dt / max(delivered, 1) * 1e6:.2f} us/msg")
        if delivered != total:
            raise SystemExit(f"short run: {total} published, {delivered} delivered")
        if prof:
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        await broker.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=200000)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--aligned", action="store_true",
                   help="feed whole frame-aligned 64 KiB chunks (the best case)")
    p.add_argument("--persistent", action="store_true",
                   help="persistent messages to a durable queue")
    p.add_argument("--confirm", action="store_true", help="publisher confirms")
    a = p.parse_args()
    asyncio.run(main(a.messages, a.size, a.profile, a.aligned, a.persistent, a.confirm))
