"""pysyncobj's TCP transport, made to say when a peer holds a different cluster secret, and
to give up a connection attempt that hangs.

pysyncobj authenticates every Raft message with the secret (Fernet) and, when one fails,
drops the connection without a word (its own comment: "Why no logging of security
errors?"): two nodes with different secrets retry forever and the operator sees only a
cluster that never forms.  Here both sides say so, each naming the other:

* the node that accepts the connection reads the first message, whose check fails (each
  connection's encryptor reports it);
* the node that connected sends that message and sees the connection closed before any
  answer, again and again.  Answering an unauthenticated peer with anything would tell a
  stranger more than a hang-up does, so this side infers it from the pattern.

A connection attempt to an address that vanished (a container recreated under a new one)
gets no answer at all: pysyncobj checks its timeout only when the socket has an event, so
it would wait for the kernel to give up on the SYN (about two minutes) before looking the
name up again.  Here an attempt older than connectionTimeout is dropped at the next tick.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from cryptography.fernet import InvalidToken
from pysyncobj.monotonic import monotonic
from pysyncobj.tcp_connection import CONNECTION_STATE

from cluster.raft_port import WarrenTransport

logger = logging.getLogger("cluster.raft")

# one line per peer and direction this often while the mismatch lasts (pysyncobj retries
# every connectionRetryTime)
LOG_EVERY = 30.0
HANG_UPS_BEFORE_BLAME = 2
SECRET_HINT = "the cluster secret (WARREN_CLUSTER_SECRET) differs between the two nodes"


class _CheckedEncryptor:
    """Fernet, plus a report when a message from this connection's peer fails its check."""

    def __init__(self, inner: Any, on_mismatch: Any) -> None:
        self._inner = inner
        self._on_mismatch = on_mismatch

    def __getattr__(self, name: str) -> Any:  # encrypt_at_time and the rest
        return getattr(self._inner, name)

    def extract_timestamp(self, token: bytes) -> int:
        try:
            return int(self._inner.extract_timestamp(token))
        except InvalidToken:
            self._on_mismatch()
            raise

    def decrypt(self, token: bytes, ttl: int | None = None) -> bytes:
        try:
            return bytes(self._inner.decrypt(token, ttl))
        except InvalidToken:
            self._on_mismatch()
            raise


def _peer_of(conn: Any) -> str:
    try:
        with socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as s:
            # the address only: the port is an ephemeral one, not the peer's Raft port
            return str(s.getpeername()[0])
    except (OSError, TypeError, ValueError):
        return "an unknown address"


class SecretCheckingTransport(WarrenTransport):
    """The Raft port's transport (cluster/raft_port.py), plus: a cluster secret mismatch
    named on both sides, and connection attempts that hang given up."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.mismatches: dict[str, float] = {}  # peer -> when last seen (monotonic)
        self._logged: dict[tuple[str, str], float] = {}
        self._mismatch_lock = threading.Lock()
        self._unanswered: set[Any] = set()  # outgoing, connected, no answer yet
        self._hung_up: dict[str, int] = {}  # peer -> handshakes it hung up on in a row
        super().__init__(*args, **kwargs)

    def _onTick(self) -> None:
        now = monotonic()
        timeout = self._syncObj.conf.connectionTimeout
        for node, conn in list(self._connections.items()):
            started = self._lastConnectAttempt.get(node)
            if (conn.state == CONNECTION_STATE.CONNECTING and started is not None
                    and now - started > timeout):
                # disconnect() calls back _onDisconnected, which tries again (with a fresh
                # address lookup) once connectionRetryTime has passed
                conn.disconnect()
        super()._onTick()

    # the accepting side: the first message fails its check

    def _onNewIncomingConnection(self, conn: Any) -> None:
        super()._onNewIncomingConnection(conn)
        if conn.encryptor is not None:
            peer = _peer_of(conn)

            conn.encryptor = _CheckedEncryptor(
                conn.encryptor, lambda: self._mismatch(peer, outgoing=False))

    # the connecting side: connected, sent its key, hung up on before any answer

    def _onOutgoingConnected(self, conn: Any) -> None:
        self._unanswered.add(conn)
        super()._onOutgoingConnected(conn)

    def _onOutgoingMessageReceived(self, conn: Any, message: Any) -> None:
        self._unanswered.discard(conn)
        node = self._connToNode(conn)
        if node is not None:
            self._hung_up.pop(getattr(node, "address", str(node)), None)
        super()._onOutgoingMessageReceived(conn, message)

    def _onDisconnected(self, conn: Any) -> None:
        if conn in self._unanswered:
            self._unanswered.discard(conn)
            node = self._connToNode(conn)
            if node is not None:
                address = getattr(node, "address", str(node))
                count = self._hung_up.get(address, 0) + 1
                self._hung_up[address] = count
                # once could be a peer stopping at that moment; again is the secret
                if count >= HANG_UPS_BEFORE_BLAME:
                    self._mismatch(address, outgoing=True)
        super()._onDisconnected(conn)

    def _mismatch(self, peer: str, *, outgoing: bool) -> None:
        now = time.monotonic()
        with self._mismatch_lock:
            self.mismatches[peer] = now
            key = (peer, "out" if outgoing else "in")
            if now - self._logged.get(key, -LOG_EVERY) < LOG_EVERY:
                return
            self._logged[key] = now
        if outgoing:
            logger.error("Raft peer %s hangs up on this node's handshake; most likely %s",
                         peer, SECRET_HINT)
        else:
            logger.error("Raft connection from %s refused: its messages fail authentication "
                         "here; %s", peer, SECRET_HINT)

    def recent_mismatches(self, within: float = 2 * LOG_EVERY) -> list[str]:
        now = time.monotonic()
        with self._mismatch_lock:
            return sorted(p for p, t in self.mismatches.items() if now - t < within)
