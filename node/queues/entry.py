"""One message's place in one queue."""

from __future__ import annotations

from node.message import Message


class QueueEntry:
    __slots__ = ("seq", "message", "redelivered", "stored")

    def __init__(self, seq: int, message: Message, redelivered: bool = False,
                 stored: bool = False) -> None:
        self.seq = seq  # position in the queue: requeued entries go back to their seq
        self.message = message
        self.redelivered = redelivered
        self.stored = stored  # a record for it is in the vhost's LMDB store

    def __lt__(self, other: "QueueEntry") -> bool:
        return self.seq < other.seq
