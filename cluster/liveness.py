"""Is a node alive?  The Raft leader's answer, for failover.

The leader keeps a session to every other member's cluster port and pings it.  Two
signals say a node is gone:

* fast: the session closes and cannot be reopened (connection refused).  A process
  killed with kill -9 has its sockets closed by the kernel at once, so this takes
  milliseconds, the way RabbitMQ's quorum queues notice a dead member;
* slow: no answer for ``timeout`` seconds (a paused process, a hung host, a partition:
  the kernel may still accept connections, but nobody answers).

The answer to a ping carries the node's store positions (``{vhost: [epoch, offset]}``), so
the leader can promote the in-sync replica that holds the most.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from cluster import wire
from cluster.follower import Connect

log = logging.getLogger("warren.liveness")

PING_INTERVAL = 0.2
RETRY_INTERVAL = 0.05

Positions = dict[str, list[int]]


class PingServer(wire.FramedProtocol):
    """Answers pings on this node's cluster port."""

    def __init__(self, positions: Callable[[], Positions]) -> None:
        super().__init__()
        self._positions = positions

    def frame_received(self, kind: int, body: bytes) -> None:
        message = self.decode_control(body) if kind == wire.CONTROL else {}
        if message.get("t") != "ping":
            raise wire.WireError("expected a ping")
        self.send(wire.control({"t": "pong", "id": message.get("id"),
                                "positions": self._positions()}))


class _Member:
    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self.session: _PingClient | None = None
        self.task: asyncio.Task[None] | None = None
        self.watched_since = time.monotonic()
        self.last_answer: float | None = None
        self.refused = False  # the last attempt to reach it was actively refused
        self.positions: Positions = {}


class Liveness:
    def __init__(self, me: str, connect: Connect, timeout: float) -> None:
        self.me = me
        self.timeout = timeout
        self._connect = connect
        self._members: dict[str, _Member] = {}
        self._ids = itertools.count(1)

    def watch(self, members: dict[str, str]) -> None:
        """Watch exactly these members (name -> cluster port address)."""
        for name in list(self._members):
            if name not in members or members[name] != self._members[name].address:
                self._forget(name)
        for name, address in members.items():
            if name != self.me and name not in self._members and address:
                member = self._members[name] = _Member(name, address)
                member.task = asyncio.ensure_future(self._keep(member))

    def stop(self) -> None:
        for name in list(self._members):
            self._forget(name)

    def _forget(self, name: str) -> None:
        member = self._members.pop(name)
        if member.task is not None:
            member.task.cancel()
        if member.session is not None:
            member.session.close()

    def dead(self, name: str, raft_connected: bool = False) -> str | None:
        """Why ``name`` counts as gone, or None while it answers (or may still).

        A refused cluster port means a dead process only if its Raft port is gone too: a
        node that is starting has Raft up before its cluster port listens."""
        member = self._members.get(name)
        if member is None:
            return None
        now = time.monotonic()
        if member.refused and member.session is None:
            if raft_connected:
                return None
            return "its cluster port refuses connections"
        since = member.last_answer if member.last_answer is not None else member.watched_since
        if now - since > self.timeout:
            return f"no answer for {now - since:.1f} s"
        return None

    def alive(self, name: str) -> bool:
        member = self._members.get(name)
        return member is not None and member.session is not None and \
            member.last_answer is not None and \
            time.monotonic() - member.last_answer <= self.timeout

    async def positions(self, names: list[str], timeout: float = 1.0) -> dict[str, Positions]:
        """Fresh store positions of the named members (those that answer in time)."""
        async def ask(member: _Member) -> tuple[str, Positions | None]:
            session = member.session
            if session is None:
                return member.name, None
            try:
                return member.name, await asyncio.wait_for(session.ping(next(self._ids)),
                                                           timeout)
            except (asyncio.TimeoutError, ConnectionError):
                return member.name, None
        found = await asyncio.gather(*(ask(self._members[n]) for n in names
                                       if n in self._members))
        return {name: pos for name, pos in found if pos is not None}

    async def _keep(self, member: _Member) -> None:
        while True:
            try:
                transport, link = await self._connect(member.address,
                                                      {"kind": "ping", "node": self.me})
            except ConnectionRefusedError:
                member.refused = True
                await asyncio.sleep(RETRY_INTERVAL)
                continue
            except (OSError, ConnectionError, asyncio.TimeoutError):
                member.refused = False  # unreachable or silent: only the timeout decides
                await asyncio.sleep(RETRY_INTERVAL)
                continue
            session = _PingClient(member)
            session.take_over(transport, link)
            member.session = session
            member.refused = False
            try:
                while not session.closed.done():
                    try:
                        await asyncio.wait_for(session.ping(next(self._ids)), PING_INTERVAL * 2)
                    except asyncio.TimeoutError:
                        pass
                    if member.last_answer is not None and \
                            time.monotonic() - member.last_answer > self.timeout:
                        session.close()
                        break
                    await asyncio.sleep(PING_INTERVAL)
            except ConnectionError:
                pass
            finally:
                member.session = None
                session.close()


class _PingClient(wire.FramedProtocol):
    def __init__(self, member: _Member) -> None:
        super().__init__()
        self.member = member
        self._waiting: dict[Any, asyncio.Future[Positions]] = {}

    def ping(self, ident: int) -> asyncio.Future[Positions]:
        fut: asyncio.Future[Positions] = asyncio.get_event_loop().create_future()
        if self.closed.done():
            fut.set_exception(ConnectionError("ping session closed"))
            return fut
        self._waiting[ident] = fut
        self.send(wire.control({"t": "ping", "id": ident}))
        return fut

    def frame_received(self, kind: int, body: bytes) -> None:
        message = self.decode_control(body) if kind == wire.CONTROL else {}
        if message.get("t") != "pong":
            raise wire.WireError("expected a pong")
        positions = message.get("positions") or {}
        self.member.last_answer = time.monotonic()
        self.member.positions = positions
        fut = self._waiting.pop(message.get("id"), None)
        if fut is not None and not fut.done():
            fut.set_result(positions)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("ping session closed"))
        self._waiting.clear()
