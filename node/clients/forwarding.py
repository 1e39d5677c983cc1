"""Any-node access: a client that opens a vhost owned by another node is served by the
owner through this node, frame for frame (DESIGN decision 3).

The accepting node authenticates the client itself (users are replicated), then opens a
forwarding connection to the owner's forwarding port and, from then on, only copies bytes
both ways.  The owner adopts the connection as already open for that user and vhost and
answers connection.open-ok, so the client sees an ordinary broker.

Only peers that hold the cluster secret may use the cluster port, and a node talks only
to a peer that holds it (mutual challenge): the listening node sends a random nonce; the
connecting node answers with msgpack-encoded facts (which session, for whom), a nonce of
its own and an HMAC-SHA256 of both nonces and the facts under a key derived from the
secret; the listening node answers with its own HMAC of the same, which the connecting node
checks before it reads anything else.  Each direction of the session then has a key of its
own, derived from the secret and both nonces, that MACs every frame of the replication and
liveness sessions (cluster/wire.py).  Nothing on this port is unpickled.

With --cluster-tls the port is TLS-only (mutual, the cluster's CA, see node/tls.py): the
listener is wrapped, not the session, so every kind of session on this port gets it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import ssl as ssl_lib
import struct
from typing import Any, Callable

import msgpack

from cluster import wire
from node.amqp.fields import encode_table
from node.tls import cluster_client_ssl

log = logging.getLogger("warren.forwarding")

# A session of another node that is not a forwarded client (its facts, its transport, its
# keys): node/runtime/vhost_roles.py's VhostRoles.accept
AcceptSession = Callable[[dict, asyncio.Transport, "wire.Link"], None]

MAGIC = b"WFWD2"
NONCE_SIZE = 32
MAC_SIZE = 32
MAX_PREAMBLE = 64 * 1024
HANDSHAKE_TIMEOUT = 5.0


def forward_key(secret: str) -> bytes:
    return hashlib.sha256(b"warrenmq-forwarding\x00" + secret.encode()).digest()


def _mac(key: bytes, nonce: bytes, payload: bytes) -> bytes:
    return hmac.new(key, nonce + payload, hashlib.sha256).digest()


def client_proof(key: bytes, server_nonce: bytes, client_nonce: bytes,
                 payload: bytes) -> bytes:
    return _mac(key, b"client\x00" + server_nonce + client_nonce, payload)


def server_proof(key: bytes, server_nonce: bytes, client_nonce: bytes,
                 payload: bytes) -> bytes:
    return _mac(key, b"server\x00" + server_nonce + client_nonce, payload)


def session_link(key: bytes, server_nonce: bytes, client_nonce: bytes, server_side: bool,
                 transport: asyncio.BaseTransport, early: bytes) -> wire.Link:
    """The per-direction frame keys of a session (none on TLS: it authenticates every
    byte already)."""
    if transport.get_extra_info("ssl_object") is not None:
        return wire.Link(None, None, early)
    nonces = server_nonce + client_nonce
    to_server = _mac(key, b"frames client->server\x00", nonces)
    to_client = _mac(key, b"frames server->client\x00", nonces)
    if server_side:
        return wire.Link(to_client, to_server, early)
    return wire.Link(to_server, to_client, early)


class Pipe(asyncio.Protocol):
    """Copies what one transport reads into another; back-pressure crosses over."""

    def __init__(self, peer: asyncio.Transport) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.cut = False  # set when the splice is ended: what arrives is dropped
        self.on_close: Callable[[], Any] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.cut:
            self.peer.write(data)

    def eof_received(self) -> bool | None:
        self.peer.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer.close()
        if self.on_close is not None:
            self.on_close()

    def pause_writing(self) -> None:
        self.peer.pause_reading()  # our side is full: stop reading what fills it

    def resume_writing(self) -> None:
        self.peer.resume_reading()


class _ToClient(Pipe):
    """The owner-to-client direction: also follows AMQP frame boundaries (a header's size
    field, then a skip), so that the entry node can end the client's connection with a
    connection.close of its own between two frames when the owner can no longer do it."""

    def __init__(self, peer: asyncio.Transport) -> None:
        super().__init__(peer)
        self._skip = 0  # bytes of the current frame still to come
        self._head = b""  # a frame header cut by a read

    @property
    def at_boundary(self) -> bool:
        return not self._skip and not self._head

    def data_received(self, data: bytes) -> None:
        if self.cut:
            return
        self.peer.write(data)
        pos, n = 0, len(data)
        if self._skip:
            pos = min(self._skip, n)
            self._skip -= pos
        if self._head:
            take = data[pos:pos + 7 - len(self._head)]
            self._head += take
            pos += len(take)
            if len(self._head) < 7:
                return
            self._skip = int.from_bytes(self._head[3:7], "big") + 1
            self._head = b""
            step = min(self._skip, n - pos)
            pos += step
            self._skip -= step
        while pos < n:
            if n - pos < 7:
                self._head = data[pos:]
                return
            size = int.from_bytes(data[pos + 3:pos + 7], "big") + 8
            if pos + size > n:
                self._skip = pos + size - n
                return
            pos += size


class Spliced:
    """A client connection this node forwards to a vhost's owner."""

    def __init__(self, vhost: str, owner: str | None, to_owner: Pipe,
                 to_client: _ToClient) -> None:
        self.vhost = vhost
        self.owner = owner
        self.to_owner = to_owner
        self.to_client = to_client

    def close(self, code: int, text: str) -> None:
        """End the client's connection from here: the owner is hung or cut off, so it
        cannot send the close itself.  Between two frames the client gets a proper
        connection.close (it answers close-ok, then we close); otherwise the socket."""
        from node.amqp import spec
        from node.amqp.frames import method_frame
        client = self.to_owner.transport
        owner = self.to_client.transport
        if self.to_client.cut or client is None:
            return
        at_boundary = self.to_client.at_boundary
        self.to_client.cut = self.to_owner.cut = True
        if owner is not None:
            owner.abort()
        if client.is_closing():
            return
        if at_boundary:
            client.write(method_frame(0, spec.ConnectionClose(
                reply_code=code, reply_text=text[:255], class_id=0, method_id=0)))
        client.close()  # after what is buffered: the close reaches the client first


# ----------------------------------------------------------------------------------------
# the accepting node's side: a client whose vhost another node owns
# ----------------------------------------------------------------------------------------
async def forward_to_owner(conn: Any, vhost: str, owner: str | None,
                    address: str) -> None:
    """Connect to the owner's cluster port with what it needs to adopt the client (who the
    client authenticated as, what was negotiated), then splice the two sockets.  The
    connection waits at connection.open meanwhile (`AMQPConnection._start_forwarding`;
    ``conn`` is that connection, which imports this module)."""
    settings = conn.settings
    facts = {"user": conn.user, "vhost": vhost, "node": settings.node_name,
             "client_properties": encode_table(conn.client_properties),
             "channel_max": conn.channel_max, "frame_max": conn.frame_max,
             "heartbeat": conn.heartbeat, "peer": [conn.peer[0], conn.peer[1]],
             "tls": conn.tls, "auth_mechanism": conn.auth_mechanism}
    try:
        upstream, link = await open_forward(address, settings.cluster_secret, facts,
                                            ssl=cluster_client_ssl(settings))
    except Exception as e:  # any failure: tell the client, never leave it hanging
        log.warning("cannot forward %s to node '%s' at %s: %s", conn.name, owner, address, e)
        # the failover controller's reason when it has one (e.g. no in-sync replica
        # left to promote: it comes back with its owner)
        conn.forward_failed(conn.broker.roles.available(vhost) or (
            f"vhost '{vhost}' is unavailable: its owner node '{owner}' cannot be reached"))
        return
    detached = conn.detach()
    if detached is None:
        upstream.close()
        return
    client, pipelined = detached
    log.info("forwarding %s (vhost '%s') to node '%s'", conn.name, vhost, owner)
    to_owner, to_client = splice(client, upstream, link.early, pipelined)
    # kept so that an owner change can close it from here (the old owner may be hung)
    spliced = Spliced(vhost, owner, to_owner, to_client)
    forwarded = conn.broker.runtime.forwarded.setdefault(vhost, set())
    forwarded.add(spliced)
    to_owner.on_close = lambda: forwarded.discard(spliced)


# ----------------------------------------------------------------------------------------
# the owner's side
# ----------------------------------------------------------------------------------------
class _ForwardServerProtocol(asyncio.Protocol):
    def __init__(self, accept_session: AcceptSession, key: bytes,
                 client_protocol: Callable[[], Any]) -> None:
        self.accept_session = accept_session
        self.key = key
        self.client_protocol = client_protocol
        self.nonce = os.urandom(NONCE_SIZE)
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(MAGIC + self.nonce)  # type: ignore[attr-defined]
        self.timer = asyncio.get_event_loop().call_later(HANDSHAKE_TIMEOUT, self._refuse,
                                                         "handshake timeout")

    def _refuse(self, why: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            peer = self.transport.get_extra_info("peername")
            log.warning("forwarding port: refused %s: %s", peer, why)
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) < 4:
            return
        (size,) = struct.unpack_from(">I", self.buf)
        if size > MAX_PREAMBLE:
            self._refuse("oversized preamble")
            return
        end = 4 + size + NONCE_SIZE + MAC_SIZE
        if len(self.buf) < end:
            return
        payload = self.buf[4:4 + size]
        client_nonce = self.buf[4 + size:4 + size + NONCE_SIZE]
        mac = self.buf[end - MAC_SIZE:end]
        rest = self.buf[end:]
        if not hmac.compare_digest(mac, client_proof(self.key, self.nonce, client_nonce,
                                                     payload)):
            self._refuse("bad cluster secret")
            return
        try:
            facts = msgpack.unpackb(payload, raw=False)
            if not isinstance(facts, dict):
                raise ValueError("preamble is not a map")
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
            self._refuse(f"malformed preamble: {e}")
            return
        if self.timer is not None:
            self.timer.cancel()
        assert self.transport is not None
        # our half of the mutual challenge: the peer reads nothing of ours before it
        self.transport.write(server_proof(self.key, self.nonce, client_nonce, payload))
        if facts.get("kind", "forward") != "forward":
            # the other sessions of the cluster port: replication, liveness pings
            self.transport.pause_reading()
            self.accept_session(facts, self.transport, session_link(
                self.key, self.nonce, client_nonce, True, self.transport, rest))
            return
        conn = self.client_protocol()
        self.transport.set_protocol(conn)
        conn.connection_made(self.transport)
        conn.adopt(facts)
        if rest:
            conn.data_received(rest)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()


async def start_forward_server(accept_session: AcceptSession, host: str, port: int,
                               secret: str, client_protocol: Callable[[], Any],
                               ssl: ssl_lib.SSLContext | None = None) -> asyncio.AbstractServer:
    """The cluster port.  A forwarded client becomes `client_protocol()` (an AMQP
    connection, given by the caller: this module stays below node.amqp, which uses it);
    every other session (replication, pings, digests) goes to `accept_session`."""
    loop = asyncio.get_running_loop()
    key = forward_key(secret)
    return await loop.create_server(
        lambda: _ForwardServerProtocol(accept_session, key, client_protocol), host, port,
        reuse_address=True, ssl=ssl)


async def open_cluster_connection(address: str, factory: Callable[[], asyncio.Protocol],
                                  ssl: ssl_lib.SSLContext | None, timeout: float
                                  ) -> tuple[asyncio.Transport, asyncio.Protocol]:
    """Connect to another node's cluster port (host:port), over TLS when `ssl` is given
    (node.tls.cluster_client_ssl(settings)): any session on that port opens this way."""
    loop = asyncio.get_running_loop()
    host, _, port = address.rpartition(":")
    transport, proto = await asyncio.wait_for(loop.create_connection(
        factory, host, int(port), ssl=ssl, server_hostname=host if ssl is not None else None),
        timeout)
    return transport, proto


# ----------------------------------------------------------------------------------------
# the accepting node's side
# ----------------------------------------------------------------------------------------
class _ForwardClientProtocol(asyncio.Protocol):
    def __init__(self, key: bytes, facts: dict, done: asyncio.Future) -> None:
        self.key = key
        self.payload = msgpack.packb(facts, use_bin_type=True)
        self.nonce = os.urandom(NONCE_SIZE)
        self.server_nonce: bytes | None = None
        self.done = done
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.done.done():
            return
        assert self.transport is not None
        hello = len(MAGIC) + NONCE_SIZE
        if self.server_nonce is None:
            if len(self.buf) < hello:
                return
            if not self.buf.startswith(MAGIC):
                self._fail("the node's cluster port spoke something else")
                return
            self.server_nonce = self.buf[len(MAGIC):hello]
            self.transport.write(struct.pack(">I", len(self.payload)) + self.payload
                                 + self.nonce + client_proof(self.key, self.server_nonce,
                                                             self.nonce, self.payload))
        if len(self.buf) < hello + MAC_SIZE:
            return
        # the other half of the mutual challenge: a node without the secret (an impostor
        # at the owner's address) is heard no further
        proof = self.buf[hello:hello + MAC_SIZE]
        if not hmac.compare_digest(proof, server_proof(self.key, self.server_nonce,
                                                       self.nonce, self.payload)):
            self._fail("the node at that address does not hold the cluster secret")
            return
        # what follows (connection.open-ok, a session's first frames) must wait for
        # splice() or take_over(): read no more until the next protocol is in place, or
        # it would land in this one and be lost
        self.transport.pause_reading()
        self.done.set_result(session_link(self.key, self.server_nonce, self.nonce, False,
                                          self.transport, self.buf[hello + MAC_SIZE:]))

    def _fail(self, why: str) -> None:
        self.done.set_exception(ConnectionError(why))
        assert self.transport is not None
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"forwarding connection lost: {exc}"))


async def open_forward(address: str, secret: str, facts: dict,
                       timeout: float = HANDSHAKE_TIMEOUT,
                       ssl: ssl_lib.SSLContext | None = None
                       ) -> tuple[asyncio.Transport, wire.Link]:
    """Connect to a node's cluster port and hand it a session's facts (a forwarded client
    connection's, or a replication or ping session's).  Returns the transport, reading
    paused, and the session's link: its frame keys and any bytes the node already sent
    past the handshake."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    transport, _proto = await open_cluster_connection(
        address, lambda: _ForwardClientProtocol(forward_key(secret), facts, done), ssl, timeout)
    try:
        link = await asyncio.wait_for(done, timeout)
    except BaseException:
        transport.abort()
        raise
    return transport, link


def splice(client: asyncio.Transport, owner: asyncio.Transport, early: bytes,
           backlog: bytes, on_close: Callable[[], Any] | None = None) -> tuple[Pipe, _ToClient]:
    """Join the client's socket and the owner's: bytes pass untouched both ways."""
    to_owner = Pipe(owner)
    to_owner.on_close = on_close
    to_client = _ToClient(client)
    client.set_protocol(to_owner)
    to_owner.connection_made(client)
    owner.set_protocol(to_client)
    to_client.connection_made(owner)
    if early:
        client.write(early)
    if backlog:
        owner.write(backlog)
    client.resume_reading()
    owner.resume_reading()
    return to_owner, to_client
