"""The change log of one vhost store: its recent committed changes as records addressed by
offset, so that a replica that is a little behind catches up by stream, not by snapshot.

Each record is one write transaction of the store (a generation: see storage/store.py),
encoded by `storage.records`.  Offsets count transactions from 1 and never repeat within
an epoch's history; the epoch is the placement epoch of the owner that wrote the record
(replicas refuse records from an older epoch).

The log lives in memory only and keeps at most ``max_bytes`` of records: a replica whose
next offset has fallen out of it catches up from a snapshot of the store instead.  While a
replica catches up (a snapshot, then the records since), it *pins* the records it still
needs, up to ``hard_max_bytes``, so that a snapshot slower than the writes does not start
over forever.  Every log of a node also draws on one `Budget` (the node's cap across all
the vhosts it owns and replicates): past it, the largest log drops its oldest records,
pins or not, and a replica that needed them catches up by snapshot.  It is used from the
event-loop thread only.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple


class Record(NamedTuple):
    offset: int
    epoch: int
    payload: bytes


class Budget:
    """One node's cap on the bytes held by all of its change logs."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.logs: set[ChangeLog] = set()

    def enforce(self) -> None:
        while self.used > self.max_bytes:
            largest = max(self.logs, key=lambda lg: lg.nbytes, default=None)
            if largest is None or not largest.drop_oldest():
                return


# The node's budget: one process is one node (unit tests make their own).
NODE_BUDGET = Budget(256 << 20)


class ChangeLog:
    """Offset-addressed, size-bounded window over a store's recent records."""

    def __init__(self, max_bytes: int = 64 << 20, hard_max_bytes: int = 128 << 20,
                 budget: Budget | None = None) -> None:
        self.max_bytes = max_bytes
        self.hard_max_bytes = hard_max_bytes
        self.budget = NODE_BUDGET if budget is None else budget
        self.budget.logs.add(self)
        self._records: deque[Record] = deque()
        self._bytes = 0
        self._pins: dict[object, int] = {}
        # The offset the next record must carry; 0 until the first record fixes the start.
        self._next = 0

    def __len__(self) -> int:
        return len(self._records)

    @property
    def nbytes(self) -> int:
        return self._bytes

    @property
    def last_offset(self) -> int | None:
        return self._records[-1].offset if self._records else None

    def append(self, offset: int, epoch: int, payload: bytes) -> None:
        if self._next and offset != self._next:
            # A gap (the store was reset by a snapshot, or records were skipped): what we
            # hold no longer joins up with what follows, so start the window afresh.
            self.clear()
        self._records.append(Record(offset, epoch, payload))
        self._bytes += len(payload)
        self.budget.used += len(payload)
        self._next = offset + 1
        records = self._records
        while self._bytes > self.max_bytes and len(records) > 1:
            if self._pins and records[0].offset > min(self._pins.values()) \
                    and self._bytes <= self.hard_max_bytes:
                break
            self.drop_oldest()
        if self.budget.used > self.budget.max_bytes:
            self.budget.enforce()

    def drop_oldest(self) -> bool:
        if len(self._records) <= 1:
            return False
        size = len(self._records.popleft().payload)
        self._bytes -= size
        self.budget.used -= size
        return True

    def close(self) -> None:
        """The store no longer keeps a log: give its bytes back to the node's budget."""
        self.clear()
        self.budget.logs.discard(self)

    def pin(self, holder: object, offset: int) -> None:
        """Keep the records after ``offset`` for ``holder`` (within the hard bound)."""
        self._pins[holder] = offset

    def unpin(self, holder: object) -> None:
        self._pins.pop(holder, None)

    def expect(self, offset: int) -> None:
        """The next record will carry ``offset`` (a log started on a store that already
        holds records: a copy at ``offset - 1`` is up to date, not unknown)."""
        if not self._records:
            self._next = offset

    def clear(self) -> None:
        self._records.clear()
        self.budget.used -= self._bytes
        self._bytes = 0
        self._next = 0

    def since(self, offset: int) -> list[Record] | None:
        """Every record after ``offset``, oldest first; None when the log cannot say (the
        record right after ``offset`` has been dropped, or was never in the window)."""
        if not self._next or offset >= self._next:
            return None
        if offset + 1 == self._next:
            return []
        records = self._records
        if not records:
            return None
        first = records[0].offset
        if offset + 1 < first:
            return None
        return [records[i] for i in range(offset + 1 - first, len(records))]

    def lag_bytes(self, offset: int) -> int:
        """Bytes of the records after ``offset`` that the log still holds."""
        found = self.since(offset)
        return sum(len(r.payload) for r in found) if found else 0
