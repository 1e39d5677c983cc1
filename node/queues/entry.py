"""One message's place in one queue."""

from __future__ import annotations

from node.amqp.message import Message


class QueueEntry:
    __slots__ = ("seq", "message", "redelivered", "stored", "expires_at", "delivered_at",
                 "acquired", "plain")

    def __init__(self, seq: int, message: Message, redelivered: bool = False,
                 stored: bool = False, expires_at: int = 0) -> None:
        self.seq = seq  # position in the queue: requeued entries go back to their seq
        self.message = message
        self.redelivered = redelivered
        self.stored = stored  # a record for it is in the vhost's LMDB store
        self.expires_at = expires_at  # wall-clock ms, 0 = never
        self.delivered_at = 0.0  # monotonic time of its delivery awaiting an ack
        # quorum queues: times it came back (x-delivery-count), and the message as
        # published when `message` is a copy carrying that header
        self.acquired = 0
        self.plain: Message | None = None

    def __lt__(self, other: "QueueEntry") -> bool:
        return self.seq < other.seq
