"""Call a Raft election as soon as the leader's process is gone, not after the election
timeout.

pysyncobj's followers wait 0.4-0.8 s without a heartbeat before they stand, and a split
or refused vote costs another round: a leader killed together with the vhosts it owns
kept them dark for 1-2.6 s.  A killed process's port refuses connections at once (the
fast signal for a crash, and what RabbitMQ's Ra acts on through Erlang's node
monitor), so a follower that sees its leader disconnected and its Raft port refusing
stands right away.  Only one survivor stands: the first by address among those still
connected (a later one takes its turn, 0.2 s apart, only when every earlier one is gone
too).  Two that stand together split the vote and both wait out the timeout after all,
and on a loaded machine the first one's vote request can take longer than any fixed turn
to arrive (each side fsyncs its term and vote first).  A partition or a paused leader
refuses nothing: the election timeout decides.

The first to stand may have the shorter log: the dead leader's last entry reached one
survivor and not the other.  Raft's vote rule (§5.4.1) then makes the other refuse it,
and that candidate can never win; pysyncobj would leave the election to the timeouts
(0.4-0.8 s more).  A survivor that refused a vote while its dead leader's election is
under way (it is a follower with no leader and has voted for nobody in the new term:
a refusal, and Raft refuses only a log behind its own) stands at once instead: its log is
the one that can win, and the refused candidate votes for it at the higher term.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Protocol


class RaftMember(Protocol):
    """What the watch needs of cluster/raft.py's MetadataStore (which starts the watch)."""

    @property
    def closed(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    def call_election(self) -> None: ...

    def voted_this_term(self) -> bool: ...

log = logging.getLogger("warren.raft")

INTERVAL = 0.02
TURN = 0.2  # between two survivors' turns to stand
JITTER = 0.03
# how long after its leader was found dead a survivor that refused a vote stands at once
# (a refusal is only an election's, but a late one belongs to the timeouts again)
AFTER_DEATH = 5.0


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
    dead_since: float | None = None  # when this node found its leader's port refusing
    while not store.closed:
        await asyncio.sleep(INTERVAL)
        status = store.status()
        leader = status.get("leader")
        state = status.get("state")
        if leader is not None or state == "leader":
            if leader is not None and status.get("partners", {}).get(leader) != "disconnected":
                dead_since = None  # a live leader: the election is over
        elif dead_since is not None and state == "follower" \
                and time.monotonic() - dead_since < AFTER_DEATH and not store.voted_this_term():
            log.warning("refused a candidate whose Raft log is behind this node's: standing "
                        "for election now (term %s)", status.get("term"))
            store.call_election()
            await asyncio.sleep(TURN)  # the election's own round trip, then look again
            continue
        if state != "follower" or leader is None \
                or status.get("partners", {}).get(leader) != "disconnected":
            continue
        if not await _refuses(leader):
            continue
        dead_since = time.monotonic()
        partners = status.get("partners", {})
        me = status.get("self", "")
        survivors = sorted([me, *(p for p in partners if p != leader)])
        turn = survivors.index(me) if me in survivors else 0
        if any(partners.get(p) == "connected" for p in survivors[:turn]):
            # a survivor whose turn comes first is connected and stands now: standing
            # too would split the vote (its request can take longer than a turn on a
            # loaded machine: a vote is fsynced before it is sent and before it is
            # answered), so this node waits for its request, and stands only if it must
            # refuse it (above) or if nobody stood by pysyncobj's own timeout
            continue
        deadline = time.monotonic() + turn * TURN + random.uniform(0, JITTER)
        # wait for this node's turn, unless another candidate's vote request comes first
        while time.monotonic() < deadline and store.status().get("leader") == leader:
            await asyncio.sleep(INTERVAL)
        status = store.status()
        if status.get("state") == "follower" and status.get("leader") == leader:
            log.warning("Raft leader %s is gone (its port refuses connections): calling an "
                        "election now", leader)
            store.call_election()
