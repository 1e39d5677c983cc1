"""The owner's end of a queue link, in process: what a move's drain uses to pause it."""

from __future__ import annotations

import asyncio

from cluster import wire
from node.shards.link import LinkServer


class Transport:
    def __init__(self) -> None:
        self.reading = True
        self.closing = False
        self.written = b""

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def set_protocol(self, protocol: object) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written += data

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def test_read_holds_pause_the_session_until_every_reason_is_released():
    async def run() -> None:
        sessions: set[LinkServer] = set()
        server = LinkServer(lambda: {}, lambda unit: True, "n2", sessions)
        transport = Transport()
        server.take_over(transport, wire.Link(None, None))  # type: ignore[arg-type]
        assert sessions == {server} and transport.reading
        server.hold_reading("move")
        server.hold_reading("other")
        assert not transport.reading
        server.release_reading("move")
        assert not transport.reading
        server.release_reading("other")
        assert transport.reading
        server.connection_lost(None)
        assert sessions == set()
    asyncio.run(run())


def test_a_publish_to_no_queue_is_nacked_in_order():
    async def run() -> None:
        server = LinkServer(lambda: {}, lambda unit: True, "n2")
        transport = Transport()
        server.take_over(transport, wire.Link(None, None))  # type: ignore[arg-type]
        for seq in (1, 2, 3):
            server.frame_received(wire.MESSAGE, wire.message((0, seq, "/", ["q"]), b"T\x90")[5:])
        for _ in range(3):  # the answer, then its write, each at the loop's next turn
            await asyncio.sleep(0)
        # one run of refusals answers all three
        assert transport.written == wire.control({"t": "nack", "upto": 3})
    asyncio.run(run())
