"""Frames of the cluster port's sessions: each carries a MAC over its place in the session."""

from __future__ import annotations

import asyncio
import os

from cluster import wire


def test_a_session_frame_out_of_order_fails_it():
    """The MAC covers each frame's place in its session: a replayed frame is refused."""
    class Sink(wire.FramedProtocol):
        def __init__(self) -> None:
            super().__init__()
            self.got: list[tuple[int, bytes]] = []
            self.failed: list[str] = []

        def frame_received(self, kind: int, body: bytes) -> None:
            self.got.append((kind, body))

        def fail(self, why: str) -> None:
            self.failed.append(why)

    class Transport(asyncio.Transport):
        def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
            pass

        def resume_reading(self) -> None:
            pass

        def is_closing(self) -> bool:
            return False

    async def main() -> None:
        key = os.urandom(32)
        sink = Sink()
        sink.take_over(Transport(), wire.Link(os.urandom(32), key))
        sender = wire.Seal(key)
        one, two = wire.ack(1, 5), wire.ack(1, 6)
        mac_one, mac_two = sender.mac(one), sender.mac(two)
        sink.data_received(one + mac_one)
        sink.data_received(one + mac_one)  # replayed
        assert sink.got == [(wire.ACK, one[5:])]
        assert sink.failed and "MAC" in sink.failed[0]
        fresh = Sink()
        fresh.take_over(Transport(), wire.Link(os.urandom(32), key))
        fresh.data_received(two + mac_two)  # the second frame first
        assert fresh.got == [] and fresh.failed
    asyncio.run(main())
