"""Keep the Raft leader off the nodes that own vhosts, when some member owns none.

A vhost whose owner also leads Raft pays an election before its failover can start: the
survivors must first elect a leader, which then promotes a replica.  A vhost
whose owner only follows is promoted by a leader that is alive all along.  So the leader
hands its role to a member that owns no vhost (Raft's leadership transfer, §3.10 of
Ongaro's thesis: pysyncobj's ``transferLeadership`` sends TimeoutNow to a follower whose
log matches the leader's, which stands at once and wins).  Killing an owner then rarely
kills the leader too.  When every member owns a vhost there is nowhere better to go and
the leader stays.

It hands off only when nothing is under way, because a change in flight on another
member when leadership moves ends with an unknown outcome there: it has led for `SETTLED`
seconds (it may have just been elected to fail vhosts over), nothing was committed for
`QUIET` seconds, no change of its own waits for a commit, no vhost is being moved (a move
commits its owner change at the end of a wait of its own), and every vhost's owner is
connected to it (an owner that is gone is this leader's to fail over first); and at most
once every `RETRY_AFTER` seconds.  A target that owns nothing
never hands the role back, so leadership moves once and stays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol


class RaftLeader(Protocol):
    """What the hand-off needs of cluster/raft.py's MetadataStore (which starts it)."""

    @property
    def closed(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    def changes_in_flight(self) -> bool: ...

    def vhost_owners(self) -> tuple[dict[str, int], set[str]]: ...

    def transfer_leadership(self, target: str) -> None: ...

log = logging.getLogger("warren.raft")

CHECK_EVERY = 0.5
SETTLED = 2.0
QUIET = 1.0
RETRY_AFTER = 5.0


def handoff_target(me: str, owned: Mapping[str, int], connected: set[str],
                   owners: set[str]) -> str | None:
    """The member to hand Raft leadership to, or None to keep it.

    ``owned``: vhosts owned per member (Raft address); ``connected``: the members this
    leader talks to; ``owners``: the Raft addresses of every vhost's owner."""
    if owned.get(me, 0) == 0 or owned.get("moving"):
        return None
    if any(o != me and o not in connected for o in owners):
        return None  # an owner may be gone: failing it over is this leader's job
    idle = sorted(m for m in connected if owned.get(m, 0) == 0)
    return idle[0] if idle else None


async def hand_off_leadership(store: RaftLeader) -> None:
    leading_since: float | None = None
    tried_at = float("-inf")
    commit_index, committed_at = None, time.monotonic()
    while not store.closed:
        await asyncio.sleep(CHECK_EVERY)
        try:
            status = store.status()
            if status.get("state") != "leader":
                leading_since = None
                continue
            now = time.monotonic()
            if leading_since is None:
                leading_since = now
            if status.get("commit_index") != commit_index:
                commit_index, committed_at = status.get("commit_index"), now
            if now - leading_since < SETTLED or now - tried_at < RETRY_AFTER \
                    or now - committed_at < QUIET or store.changes_in_flight():
                continue
            owned, owners = store.vhost_owners()
            connected = {p for p, v in status.get("partners", {}).items() if v == "connected"}
            me = status.get("self", "")
            target = handoff_target(me, owned, connected, owners)
            if target is None:
                continue
            tried_at = now
            log.info("this Raft leader owns %d vhost(s) and %s owns none: handing Raft "
                     "leadership to it, so that losing an owner never costs an election "
                     "too", owned.get(me, 0), target)
            store.transfer_leadership(target)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Raft leadership hand-off check failed")
