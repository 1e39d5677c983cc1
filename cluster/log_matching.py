"""Raft's append-entries rule that pysyncobj does not follow: a follower deletes its log
entries only where they *conflict* with the leader's (same index, other term).

pysyncobj truncates everything after `prevLogIdx` on every append-entries, then appends what
the message carries.  A leader that sends entries as they arrive (appendEntriesUseBatch
False) and again on its heartbeat, before the follower's reply has moved its next index,
delivers stale copies: the follower then cuts entries it has already acknowledged and
applied ("truncating already-applied log entries ... state machine may have diverged", seen
under declare/delete churn on three nodes).  The entries come back with the next message,
so usually nothing is lost; but an entry the follower acknowledged (and a majority counted
as committed) is, for a moment, missing from its log and journal: if the leader dies then,
a node without it can win the election, and the applied state of the follower and the new
log no longer agree.

`trim_append_entries` rewrites such a message before pysyncobj sees it so that it keeps
what provably matches the leader's log:

* entries at or below the follower's commit index (committed entries are in every later
  leader's log, at the same index: Raft's leader completeness);
* entries whose term equals a new entry's term at the same index (log matching);
* entries of the message's own term (one leader per term: they came from this leader).

Pure function: no pysyncobj, no I/O (tested on plain lists)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["trim_append_entries"]

# (command bytes, index, term), as pysyncobj keeps log entries
Entry = tuple[Any, int, int]


def trim_append_entries(message: dict[str, Any], entry_at: Callable[[int], Entry | None],
                        last_index: int, commit_index: int) -> dict[str, Any]:
    """The append-entries `message` to hand to pysyncobj instead of the one received.

    `entry_at(i)` is the follower's entry at index i (None if absent), `last_index` the
    index of its last entry.  Returns `message` itself when nothing needs to change."""
    if "prevLogIdx" not in message or message.get("transmission") is not None:
        return message
    prev_idx = int(message["prevLogIdx"])
    if prev_idx >= last_index:
        return message  # nothing after prevLogIdx: pysyncobj truncates nothing
    prev = entry_at(prev_idx)
    if prev is None or prev[2] != message["prevLogTerm"]:
        return message  # mismatch: pysyncobj answers with a reset, as Raft does
    new = {int(e[1]): e for e in message.get("entries") or ()}
    term = message.get("term")
    keep = prev_idx  # the last index of ours known to be in the leader's log
    for idx in range(prev_idx + 1, last_index + 1):
        ours = entry_at(idx)
        if ours is None:
            break
        theirs = new.get(idx)
        if theirs is not None:
            if theirs[2] != ours[2]:
                break  # a real conflict: delete from here (pysyncobj will)
        elif idx > commit_index and ours[2] != term:
            break  # not known to match: pysyncobj may delete it
        keep = idx
    if keep == prev_idx:
        return message
    kept = entry_at(keep)
    assert kept is not None
    trimmed = dict(message)
    trimmed["prevLogIdx"] = keep
    trimmed["prevLogTerm"] = kept[2]
    trimmed["entries"] = [e for e in message.get("entries") or () if int(e[1]) > keep]
    return trimmed
