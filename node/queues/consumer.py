"""A subscription of one channel to one queue (basic.consume)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from node.queues.entry import QueueEntry

# the queue a consumer subscribes to (node/queues/queue.py's Queue, which imports this
# module and so is not imported here)
Queue = Any


class ConsumerOwner(Protocol):
    """What a queue needs from the channel that consumes: whether it may take another
    message now, and a way to hand one over.  Keeps queues free of AMQP connection code."""

    def can_deliver(self, consumer: "Consumer") -> bool: ...

    def deliver(self, consumer: "Consumer", queue: Queue, entry: "QueueEntry") -> None: ...

    def cancel_consumers_of(self, queue: Queue) -> None:
        """The queue is gone: forget (and tell the client about) its consumers."""


class Consumer:
    __slots__ = ("tag", "queue", "owner", "no_ack", "exclusive", "prefetch", "unacked",
                 "arguments", "priority", "tag_bytes")

    def __init__(self, tag: str, queue: Queue, owner: Any, no_ack: bool, exclusive: bool,
                 prefetch: int, arguments: dict | None = None) -> None:
        self.tag = tag
        self.queue = queue
        self.owner: ConsumerOwner = owner
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.prefetch = prefetch  # 0 = unlimited; per consumer, as RabbitMQ's global=false
        self.unacked = 0
        self.arguments = arguments or {}
        self.priority = 0
        tb = tag.encode()
        self.tag_bytes = bytes((len(tb),)) + tb  # the consumer-tag shortstr of basic.deliver

    def has_capacity(self) -> bool:
        return self.no_ack or self.prefetch == 0 or self.unacked < self.prefetch
