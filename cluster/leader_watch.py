"""Call a Raft election as soon as the leader's process is gone, not after the election
timeout.

pysyncobj's followers wait 0.4-0.8 s without a heartbeat before they stand, and a split
or refused vote costs another round: a leader killed together with the vhosts it owns
kept them dark for 1-2.6 s.  A killed process's port refuses connections at once (the
fast signal for a crash, and what RabbitMQ's Ra acts on through Erlang's node
monitor), so a follower that sees its leader disconnected and its Raft port refusing
stands right away.  The survivors stand in turn (by address, 0.2 s apart): two that stand
together split the vote and both wait out the timeout after all, and the first one's vote
request reaches the others well within 0.2 s.  A partition or a paused leader refuses
nothing: the election timeout decides.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Protocol


class RaftMember(Protocol):
    """What the watch needs of cluster/raft.py's MetadataStore (which starts the watch)."""

    @property
    def closed(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    def call_election(self) -> None: ...

log = logging.getLogger("warren.raft")

INTERVAL = 0.05
TURN = 0.2  # between two survivors' turns to stand
JITTER = 0.03


async def _refuses(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 0.2)
    except ConnectionRefusedError:
        return True
    except (OSError, asyncio.TimeoutError, ValueError):
        return False
    writer.close()
    return False


async def watch_leader(store: RaftMember) -> None:
    while not store.closed:
        await asyncio.sleep(INTERVAL)
        status = store.status()
        leader = status.get("leader")
        if status.get("state") != "follower" or leader is None \
                or status.get("partners", {}).get(leader) != "disconnected":
            continue
        if not await _refuses(leader):
            continue
        survivors = sorted([status.get("self", ""), *(
            p for p in status.get("partners", {}) if p != leader)])
        turn = survivors.index(status.get("self", "")) if status.get("self") in survivors else 0
        await asyncio.sleep(turn * TURN + random.uniform(0, JITTER))
        status = store.status()
        if status.get("state") == "follower" and status.get("leader") == leader:
            log.warning("Raft leader %s is gone (its port refuses connections): calling an "
                        "election now", leader)
            store.call_election()
