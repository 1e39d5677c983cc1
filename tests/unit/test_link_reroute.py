"""A queue link's unanswered publishes when the owners of their queues change
(LinkClient.reroute): what this node no longer owns goes to the new owners in order, a
publish to queues on two owners keeps its place for the names that stay, and each
publisher's confirm waits for every part."""

from __future__ import annotations

import asyncio
from typing import Any

from node.amqp.message import Message
from node.shards.link import PUBLISH_WAIT, LinkClient


async def _never(_address: str, _facts: dict) -> Any:
    raise ConnectionError("the owner is down")


def _link() -> LinkClient:
    # never started: no session, so every publish waits in the backlog
    return LinkClient("a", "b", lambda: "127.0.0.1:1", _never)


async def _turns(n: int = 3) -> None:
    """Let the loop run the done-callbacks that carry an answer on (one turn per hop)."""
    for _ in range(n):
        await asyncio.sleep(0)


def _msg(i: int) -> Message:
    return Message("", "q", b"\x00" * 14, b"m%d" % i, True)


def test_reroute_moves_what_the_peer_no_longer_owns_in_order_and_splits_the_rest():
    async def run() -> None:
        link = _link()
        f1 = link.publish("v", ["q1"], _msg(1))
        f2 = link.publish("v", ["q1", "q2"], _msg(2))
        f3 = link.publish("v", ["q2"], _msg(3))
        f4 = link.publish("v", ["q1"], _msg(4))
        sent: list[tuple[list[str], bytes, bool, asyncio.Future[bool]]] = []
        # q1's shard moved away from b; q2 stays
        link.reroute(lambda _v, names: "q1" not in names,
                     lambda _v, names, record, again, fut: sent.append(
                         (names, Message.decode(record).body, again, fut)))
        assert [(names, body, again) for names, body, again, _f in sent] == [
            (["q1"], b"m1", False), (["q1"], b"m2", False), (["q1"], b"m4", False)]
        # b keeps publishes 2 (for q2 only) and 3, at their places
        assert [(e[0], e[4]) for e in link._pending] == [(2, ["q2"]), (3, ["q2"])]
        assert [item[2] for item in link._backlog] == [2, 3]
        assert link._pending_bytes == sum(e[2] for e in link._pending)
        for _names, _body, _again, fut in sent:
            fut.set_result(True)
        await _turns()  # done-callbacks run on the loop's next turns
        assert f1.done() and f1.result() and f4.result()
        assert not f2.done()  # q2's part is b's to answer
        link._confirmed(2, True)
        await _turns()
        assert f2.result() is True and not f3.done()
        link._confirmed(3, False)
        await _turns()
        assert f3.result() is False
        link.close()
    asyncio.run(run())


def test_a_publish_no_owner_answers_is_nacked_after_publish_wait():
    async def run() -> None:
        link = _link()
        fut = link.publish("v", ["q1"], _msg(1))
        link._pending[0][7] = asyncio.get_running_loop().time() - 1  # as if sent long ago
        link._backlog_expired()
        assert fut.done() and fut.result() is False
        assert not link._pending and link._pending_bytes == 0
        link.close()
    assert PUBLISH_WAIT >= 10
    asyncio.run(run())
