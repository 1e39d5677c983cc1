"""The Raft port as WarrenMQ runs it: pysyncobj's TCP transport with three additions.

* Bounds before authentication.  pysyncobj reads a stranger's first four bytes as a length
  and buffers until that much has arrived, with no limit, and keeps the connection as long
  as a byte arrives every few seconds.  A peer that has not yet proved it holds the cluster
  secret (its first message must decrypt under it) may make us hold at most
  `PREAUTH_MAX_BYTES` and for at most `PREAUTH_TIMEOUT` seconds; refusals are logged with
  the peer's address, as the forwarding port does.
* The journal is durable before any Raft message leaves (`cluster.journal`).
* Stale append-entries are trimmed so that entries matching the leader's log are never
  deleted (`cluster.log_matching`).
* Links are kept warm: every member sends every connected member a `keepalive` each
  `KEEPALIVE_EVERY` seconds (pysyncobj ignores a message type it does not know).  Two
  followers otherwise exchange nothing, and pysyncobj drops a connection that has read
  nothing for `connectionTimeout` (3.5 s) when it next sends on it: the first vote
  request after the leader's death was lost that way, the link re-made a second later,
  and the election left to the timeouts (0.7 s of every failover whose owner led Raft).
* Every message carries the sender's cluster id (`cluster.membership`); messages from a
  node of another cluster (a member whose log was written outside this one) are dropped,
  so it can neither vote nor lead here.  A node that knows no id yet (a new member before
  it applied the cluster's state) is heard.

Everything here runs on pysyncobj's tick thread.  The pysyncobj internals it touches
(name-mangled attributes of SyncObj and TcpConnection) are those of 0.3.17."""

from __future__ import annotations

import logging
import time
from typing import Any

from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.transport import TCPTransport

from cluster.log_matching import trim_append_entries

__all__ = ["PREAUTH_MAX_BYTES", "PREAUTH_TIMEOUT", "WarrenTransport"]

logger = logging.getLogger("warren.raft_port")

# pysyncobj's first messages (the peer's random key, then its address) are a few hundred
# bytes once encrypted; anything this large before authentication is not a peer.
PREAUTH_MAX_BYTES = 64 * 1024
PREAUTH_TIMEOUT = 5.0
CLUSTER_TAG = "warren_cluster"  # the key added to pysyncobj's message dicts
# well inside pysyncobj's connectionTimeout (3.5 s), so that no idle link is dropped
KEEPALIVE_EVERY = 1.0
FOREIGN_LOG_EVERY = 30.0


class WarrenTransport(TCPTransport):
    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:  # noqa: N803
        self._pending: dict[TcpConnection, tuple[float, str]] = {}
        self._foreign_logged: dict[str, float] = {}
        self.foreign: dict[str, str] = {}  # peer -> the other cluster id it sent
        self._warmed_at = 0.0
        super().__init__(syncObj, selfNode, otherNodes)
        syncObj.addOnTickCallback(self._expire_unauthenticated)
        syncObj.addOnTickCallback(self._keep_links_warm)

    def _keep_links_warm(self) -> None:
        now = time.monotonic()
        if now - self._warmed_at < KEEPALIVE_EVERY:
            return
        self._warmed_at = now
        for node, conn in list(self._connections.items()):
            if conn.state == CONNECTION_STATE.CONNECTED:
                self.send(node, {"type": "keepalive"})

    # --------------------------------------------------------- before authentication
    def _onNewIncomingConnection(self, conn: TcpConnection) -> None:  # noqa: N802
        try:
            peer = "%s:%s" % conn._TcpConnection__socket.getpeername()[:2]
        except (OSError, AttributeError, TypeError):
            peer = "?"
        self._pending[conn] = (time.monotonic(), peer)
        read_more = conn._TcpConnection__processRead

        def bounded_read() -> bool:
            more = read_more()
            if conn in self._pending and len(conn._TcpConnection__readBuffer) > PREAUTH_MAX_BYTES:
                self._refuse(conn, f"more than {PREAUTH_MAX_BYTES} bytes before authenticating")
                return False
            return bool(more)

        # TcpConnection calls self.__processRead(): an instance attribute takes precedence
        conn._TcpConnection__processRead = bounded_read
        super()._onNewIncomingConnection(conn)

    def _onIncomingMessageReceived(self, conn: TcpConnection, message: Any) -> None:  # noqa: N802
        # the first message decrypted under the cluster secret: the peer holds it
        self._pending.pop(conn, None)
        super()._onIncomingMessageReceived(conn, message)

    def _onDisconnected(self, conn: TcpConnection) -> None:  # noqa: N802
        pending = self._pending.pop(conn, None)
        if pending is not None:
            # pysyncobj hangs up silently on bytes that do not decrypt under the secret
            logger.warning("raft port: refused %s: hung up before authenticating (wrong "
                           "cluster secret, or not a WarrenMQ node)", pending[1])
        super()._onDisconnected(conn)

    def _refuse(self, conn: TcpConnection, why: str) -> None:
        _since, peer = self._pending.pop(conn, (0.0, "?"))
        logger.warning("raft port: refused %s: %s", peer, why)
        self._unknownConnections.discard(conn)
        conn.disconnect()

    def _expire_unauthenticated(self) -> None:
        now = time.monotonic()
        for conn, (since, _peer) in list(self._pending.items()):
            if now - since > PREAUTH_TIMEOUT:
                self._refuse(conn, f"not authenticated within {PREAUTH_TIMEOUT:g} s")

    # --------------------------------------------------------- Raft messages
    def _cluster_id(self) -> str:
        replica = getattr(self._syncObj, "_replica", None)
        return str(getattr(replica, "cluster_id", "") or "")

    def send(self, node: Any, message: Any) -> bool:
        journal = getattr(self._syncObj, "_SyncObj__raftLog", None)
        sync = getattr(journal, "sync", None)
        if sync is not None:
            sync()  # nothing we claim to hold may be lost after a peer counted it
        if isinstance(message, dict):
            message[CLUSTER_TAG] = self._cluster_id()
        return bool(super().send(node, message))

    def _onMessageReceived(self, node: Any, message: Any) -> None:  # noqa: N802
        if isinstance(message, dict):
            theirs = message.pop(CLUSTER_TAG, "")
            ours = self._cluster_id()
            if theirs and ours and theirs != ours:
                self._foreign_message(node, str(theirs), ours)
                return
            if message.get("type") == "append_entries":
                message = self._trim(message)
        super()._onMessageReceived(node, message)

    def _foreign_message(self, node: Any, theirs: str, ours: str) -> None:
        peer = str(getattr(node, "address", node))
        self.foreign[peer] = theirs
        now = time.monotonic()
        if now - self._foreign_logged.get(peer, -FOREIGN_LOG_EVERY) < FOREIGN_LOG_EVERY:
            return
        self._foreign_logged[peer] = now
        logger.error("raft: refused the messages of %s: they belong to cluster %s, this "
                     "node's log to cluster %s (one of the two logs was written outside the "
                     "other's cluster: a node started alone on a member's data, or data from "
                     "another cluster); move the stray node's data directory away and join "
                     "it as a new member", peer, theirs, ours)

    def _trim(self, message: dict[str, Any]) -> dict[str, Any]:
        obj = self._syncObj
        log = obj._SyncObj__raftLog
        if not len(log):
            return message
        first = log[0][1]
        last = log[len(log) - 1][1]

        def entry_at(idx: int) -> Any:
            i = idx - first
            return log[i] if 0 <= i < len(log) else None

        trimmed = trim_append_entries(message, entry_at, last, obj._SyncObj__raftCommitIndex)
        if trimmed is not message:
            logger.debug("raft: stale append-entries from prevLogIdx %s kept our log to %s",
                         message.get("prevLogIdx"), trimmed["prevLogIdx"])
        return trimmed
