"""The ready messages of a queue, in delivery order.

`ReadyList`: new messages in a deque; requeued ones in a heap keyed by their sequence
number, so a nacked message goes back to its old place ahead of newer ones.
`PriorityReadyList` (x-max-priority): one ReadyList per priority level, highest first."""

from __future__ import annotations

import heapq
from collections import deque
from typing import Iterator

from node.queues.entry import QueueEntry


class ReadyList:
    __slots__ = ("_new", "_requeued", "n")

    def __init__(self) -> None:
        self._new: deque[QueueEntry] = deque()
        self._requeued: list[QueueEntry] = []
        self.n = 0  # entries held; read on every publish, so kept rather than computed

    def __len__(self) -> int:
        return self.n

    def __bool__(self) -> bool:
        return self.n > 0

    def __iter__(self) -> Iterator[QueueEntry]:
        yield from self._requeued
        yield from self._new

    def push(self, entry: QueueEntry) -> None:
        self._new.append(entry)
        self.n += 1

    def requeue(self, entry: QueueEntry) -> None:
        heapq.heappush(self._requeued, entry)
        self.n += 1

    def peek(self) -> QueueEntry | None:
        rq, new = self._requeued, self._new
        if rq and (not new or rq[0].seq < new[0].seq):
            return rq[0]
        return new[0] if new else None

    def pop(self) -> QueueEntry | None:
        rq, new = self._requeued, self._new
        if rq and (not new or rq[0].seq < new[0].seq):
            self.n -= 1
            return heapq.heappop(rq)
        if new:
            self.n -= 1
            return new.popleft()
        return None

    def clear(self) -> None:
        self._new.clear()
        self._requeued.clear()
        self.n = 0


class PriorityReadyList:
    """Higher priority first; within a priority, queue order.  A message without a priority
    is 0, one above the maximum counts as the maximum (RabbitMQ's rules)."""

    __slots__ = ("_levels", "_max", "n")

    def __init__(self, max_priority: int) -> None:
        self._max = max_priority
        self._levels = [ReadyList() for _ in range(max_priority + 1)]
        self.n = 0

    def level(self, entry: QueueEntry) -> ReadyList:
        p = entry.message.priority
        return self._levels[min(max(p, 0), self._max)]

    def __len__(self) -> int:
        return self.n

    def __bool__(self) -> bool:
        return self.n > 0

    def __iter__(self) -> Iterator[QueueEntry]:
        for lv in reversed(self._levels):
            yield from lv

    def push(self, entry: QueueEntry) -> None:
        self.level(entry).push(entry)
        self.n += 1

    def requeue(self, entry: QueueEntry) -> None:
        self.level(entry).requeue(entry)
        self.n += 1

    def peek(self) -> QueueEntry | None:
        for lv in reversed(self._levels):
            if lv:
                return lv.peek()
        return None

    def pop(self) -> QueueEntry | None:
        for lv in reversed(self._levels):
            if lv:
                self.n -= 1
                return lv.pop()
        return None

    def clear(self) -> None:
        for lv in self._levels:
            lv.clear()
        self.n = 0
