"""What the management plane and the metrics may see of queues, channels, connections and
vhosts: one frozen value per object, built on demand by its `stats()` method, so that
`node/http` never reads a private field, a transport or a container's insides.

The four types live together, not beside their classes, because they are one contract
between the runtime and `node/http`: this file lists every live figure the API can show,
and the classes that build them (some under refactoring) gain one marked section each.

Nothing here is maintained per message: `stats()` reads the object's current state when
asked.  The counters the hot path increments (`stats_*` on queues, exchanges and channels,
kept by a deleted object's vhost in `retired_stats`) and a queue's `message_count`,
`unacked` and `consumer_count` stay plain public integers: the statistics sampler reads
them for every queue, exchange and channel every few seconds (a `stats()` costs a few
microseconds, an integer a fraction of one).  Identity facts (`name`, `vhost`, `durable`,
`arguments`, a connection's `user` and `peer`...) are public attributes too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

# Read models sit below everything they describe (queues, channels, connections import
# them), so the consumers and channels they list are named, not imported: a
# node.queues.consumer.Consumer and a node.clients.channel.Channel.
Consumer = Any
Channel = Any


@dataclass(frozen=True, slots=True)
class QueueStats:
    """`Queue.stats()`: depths and sizes as RabbitMQ's queue object shows them."""

    messages_ready: int  # in memory and paged out
    messages_unacknowledged: int
    messages_ready_ram: int  # ready and in memory
    messages_paged_out: int  # ready, only in the vhost's store
    message_bytes_ready_ram: int  # body bytes of messages_ready_ram
    message_bytes_paged_out: int  # store record bytes of messages_paged_out
    consumers: tuple[Consumer, ...]
    exclusive_consumer: Consumer | None
    single_active_consumer: Consumer | None  # the one that receives; None without SAC
    head_message_timestamp: int | None  # timestamp property of the in-memory head

    @property
    def message_bytes_ready(self) -> int:
        return self.message_bytes_ready_ram + self.message_bytes_paged_out


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """`Channel.stats()`: one channel's state, as RabbitMQ's channel object shows it."""

    number: int
    connection_name: str
    user: str
    vhost: str | None
    state: str  # "running" while open, else the channel's own state name
    consumers: tuple[Consumer, ...]
    prefetch_count: int
    global_prefetch_count: int
    confirm: bool
    transactional: bool
    messages_unacknowledged: int
    messages_unconfirmed: int
    messages_uncommitted: int  # publishes of the open transaction
    acks_uncommitted: int  # acks of the open transaction
    pending_raft_commands: int  # a definition change in Raft plus the frames behind it


@dataclass(frozen=True, slots=True)
class TLSSession:
    protocol: str | None  # e.g. "TLSv1.3"
    cipher: str | None
    peer_cert_subject: str | None  # CN of a verified client certificate


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    """`AMQPConnection.stats()`: the connection and its socket, as RabbitMQ shows them."""

    name: str
    user: str
    vhost: str | None
    state: str  # RabbitMQ's names: starting, tuning, opening, running, closing, closed
    channels: tuple[Channel, ...]
    channel_max: int
    frame_max: int
    heartbeat: int
    client_properties: Mapping[str, Any]
    auth_mechanism: str
    connected_at: float  # time.time() at accept
    peer_host: str
    peer_port: int
    host: str | None  # our address of the socket (None once it is gone)
    port: int | None
    ssl: bool  # AMQPS, on the node the client connected to
    tls_session: TLSSession | None  # the live TLS session on this socket, if any
    recv_bytes: int
    send_bytes: int
    recv_count: int  # socket reads
    send_count: int  # socket writes
    send_pending: int  # bytes waiting in our send buffer


@dataclass(frozen=True, slots=True)
class VhostStats:
    """`VirtualHost.stats()`: totals over a vhost's queues and connections."""

    queues: int
    exchanges: int
    connections: int
    messages_ready: int
    messages_unacknowledged: int
    recv_bytes: int  # of its connections open now
    send_bytes: int
