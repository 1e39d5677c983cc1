"""`MetadataStore`: the definitions state machine (`cluster.definitions`) replicated by
Raft through pysyncobj, for callers on an asyncio event loop.

Every definition change, also on a single node, is a msgpack-encoded command committed
through Raft and applied by `DefinitionState.apply` on every node in commit order.  The
node keeps its own runtime mirror, fed by `subscribe` events; messages never pass here.

Threads.  pysyncobj runs with ``autoTick=True``: its own thread polls the Raft sockets,
writes the journal and applies committed entries.  The alternative the maintainer suggests
for asyncio (``autoTick=False``, ``doTick(0)`` from the loop) would put journal writes,
pickling, compaction and a socket poll on the event loop, and its latency is the tick
cadence; a thread never blocks the loop, and with a wake-up pipe (see `_Wakeup`) a change
commits in well under a millisecond on one node.  The price is one lock: the tick thread
takes it around each `apply` (a few dict updates) and `snapshot()` takes it on the loop.
Results and events cross to the loop with ``call_soon_threadsafe``, always in commit order
and each command's event before its `submit()` resolves (read-your-writes).

Journal replay.  pysyncobj keeps no record of what was applied: at start it loads the
last full dump (if any) and re-applies the journal after it, so listeners subscribed before
`start()` see a ``reset`` (dump) and then the replayed commands, exactly as when they were
first committed.  That is why `apply` must be deterministic and free of side effects.

Security.  pysyncobj unpickles what arrives on the Raft port, so the port must only talk
to holders of the cluster secret.  A multi-node store refuses to start without
one; a single node without one listens on loopback only with a random secret nobody knows.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pysyncobj.syncobj as _pysyncobj_module
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.node import TCPNode
from pysyncobj.poller import POLL_EVENT_TYPE

from cluster import definitions_digest
from cluster.definitions import INTERNAL_ERROR, DefinitionState
from cluster.journal import DurableJournal
from cluster.leader_handoff import hand_off_leadership
from cluster.leader_watch import watch_leader
from cluster.raft_transport import SecretCheckingTransport

__all__ = [
    "DEFAULT_RAFT_PORT",
    "ClusterUnavailable",
    "DefinitionsMachine",
    "Listener",
    "MetadataStore",
    "normalize_address",
]

logger = logging.getLogger(__name__)

DEFAULT_RAFT_PORT = 25672

# Header of our full-dump file (pysyncobj's own is a gzip'ed pickle of the whole object).
_DUMP_MAGIC = "warrenmq-definitions-dump"
_DUMP_VERSION = 1

# Committed by start() to learn that everything before it is applied here; not an event.
_BARRIER = msgpack.packb({"op": "barrier"}, use_bin_type=True)

Listener = Callable[[dict[str, Any], dict[str, Any]], None]

_FAIL_TEXT = {
    FAIL_REASON.QUEUE_FULL: "too many changes waiting for Raft",
    FAIL_REASON.MISSING_LEADER: "no leader elected",
    FAIL_REASON.DISCARDED: "a new leader discarded the change",
    FAIL_REASON.NOT_LEADER: "the leader changed before the change was committed",
    FAIL_REASON.LEADER_CHANGED: "the leader changed before the change was committed",
    FAIL_REASON.REQUEST_DENIED: "the leader denied the change",
    # 0.3.17: the entry may or may not have been committed.
    getattr(FAIL_REASON, "UNKNOWN_OUTCOME", 7): "outcome unknown after a leader change; "
    "the change may have been applied",
}


_RAFT_STATES = {0: "follower", 1: "candidate", 2: "leader"}
_FOLLOWER_STATE, _LEADER_STATE = 0, 2
# A follower stands for election 0.4-0.8 s after the leader's last heartbeat.
RAFT_MIN_TIMEOUT = 0.4
# how long a change waits for a leader while a majority is connected (an election)
ELECTION_WAIT = 1.0
RAFT_MAX_TIMEOUT = 0.8


class _DumpFailureFilter(logging.Filter):
    """pysyncobj logs a failed dump load with a traceback and carries on; start() reports
    it instead (one line, and the node refuses to serve stale definitions)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "failed to load full dump"


logging.getLogger("pysyncobj.syncobj").addFilter(_DumpFailureFilter())


# a change that may or may not have been committed: pysyncobj's own "unknown" answers, and
# LEADER_CHANGED (the entry was in the old leader's log and may survive the election)
_UNKNOWN_OUTCOMES = {FAIL_REASON.LEADER_CHANGED, getattr(FAIL_REASON, "UNKNOWN_OUTCOME", 7)}


class ClusterUnavailable(Exception):
    """A definition change could not be committed: no leader, no quorum, or timeout.

    The node turns it into 541 INTERNAL_ERROR for the client, as RabbitMQ does when its
    metadata store has no quorum; the client may retry.
    """


class MembershipPending(ClusterUnavailable):
    """A membership change whose outcome is unknown (timeout, leader change): the member
    shows as "joining" until the Raft configuration settles it."""


def normalize_address(address: str) -> str:
    """``host`` or ``host:port`` -> ``host:port`` (default port 25672)."""
    address = address.strip()
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        return f"{address}:{DEFAULT_RAFT_PORT}"
    if not port.isdigit():
        raise ValueError(f"bad raft address {address!r}: expected host:port")
    return address


def _has_quorum(machine: SyncObj) -> bool:
    """pysyncobj's hasQuorum (connected voters), read from the loop thread: the tick
    thread may change the set of connected nodes while it is being intersected."""
    for _ in range(5):
        try:
            return bool(machine.hasQuorum)
        except RuntimeError:
            continue
    return False


class _Replica:
    """The definitions as seen from pysyncobj's tick thread.

    Held outside the SyncObj subclass so that no lock, loop or listener ever sits in an
    object pysyncobj might pickle.  Mutated only on the tick thread, under `lock`.
    """

    def __init__(self, emit: Listener, recorded_cluster_id: str = "") -> None:
        self.lock = threading.Lock()
        self.state = DefinitionState()
        self._emit = emit
        self.dump_error: BaseException | None = None
        # the id in this node's data directory (cluster/membership.py), else the state's
        self.recorded_cluster_id = recorded_cluster_id
        self.digests = definitions_digest.DigestChecks()
        self.changes = 0  # definition commands applied (not barriers nor digest checks)

    @property
    def cluster_id(self) -> str:
        """What this node tags its Raft messages with (cluster/raft_port.py)."""
        return self.recorded_cluster_id or self.state.cluster_id

    def apply_blob(self, blob: bytes) -> dict[str, Any]:
        try:
            command = msgpack.unpackb(blob, raw=False)
        except Exception as exc:
            # Only a peer holding the secret can get here; still never raise (pysyncobj
            # would retry this entry forever).
            command = {"op": None}
            result = {
                "ok": False,
                "code": INTERNAL_ERROR,
                "text": f"undecodable definition command: {exc}",
            }
        else:
            op = command.get("op") if isinstance(command, dict) else None
            if op in definitions_digest.OPS:
                return self._digest_op(command)
            with self.lock:
                result = self.state.apply(command)
            if op != "barrier":
                self.changes += 1
        if not (isinstance(command, dict) and command.get("op") == "barrier"):
            self._emit(command if isinstance(command, dict) else {"op": None}, result)
        return result

    def _digest_op(self, command: dict[str, Any]) -> dict[str, Any]:
        """A divergence check (cluster/definitions_digest.py): compared, never applied to the state."""
        mark_id, by = str(command.get("id", "")), str(command.get("by", ""))
        with self.lock:
            if command["op"] == "digest_mark":
                return {"ok": True, "digest": self.digests.mark(mark_id, self.state)}
            self.digests.check(mark_id, str(command.get("digest", "")), by)
        return {"ok": True}

    # pysyncobj calls these on the tick thread, between two applies, when it compacts the
    # log (serializer) or loads a dump at start or from the leader (deserializer).  With a
    # custom serializer it passes only its own bookkeeping, `raft_data` =
    # (last applied entry, the entry before it, set of cluster Nodes), where an entry is
    # (command bytes, index, term); the object state is ours to save (data[0] is None).

    def serialize(self, filename: str, raft_data: tuple[Any, Any, Any]) -> None:
        last, prev, cluster = raft_data
        payload = {
            "magic": _DUMP_MAGIC,
            "version": _DUMP_VERSION,
            # Packed in place, no copy: only this (tick) thread mutates the state.
            "state": self.state.dumps(),
            "raft": {
                "last": [bytes(last[0]), last[1], last[2]],
                "prev": [bytes(prev[0]), prev[1], prev[2]],
                "cluster": sorted(node.id for node in cluster),
            },
        }
        data = msgpack.packb(payload, use_bin_type=True)
        with open(filename, "wb") as f:
            f.write(data)
            f.flush()
            # pysyncobj renames this over the dump and then truncates the journal.
            os.fsync(f.fileno())

    def deserialize(self, filename: str) -> tuple[Any, Any, list[TCPNode]]:
        try:
            with open(filename, "rb") as f:
                payload = msgpack.unpackb(f.read(), raw=False)
            if payload.get("magic") != _DUMP_MAGIC or payload.get("version") != _DUMP_VERSION:
                raise ValueError(f"{filename} is not a WarrenMQ definitions dump")
            state = DefinitionState.loads(payload["state"])
            raft = payload["raft"]
            # Tuples, as the journal holds them: pysyncobj compares them with its first
            # two journal entries and, when they differ, clears the journal.
            last = (bytes(raft["last"][0]), int(raft["last"][1]), int(raft["last"][2]))
            prev = (bytes(raft["prev"][0]), int(raft["prev"][1]), int(raft["prev"][2]))
            # Node objects, not strings: pysyncobj filters itself out with `!=`, which a
            # str never satisfies against a Node.
            cluster = [TCPNode(address) for address in raft["cluster"]]
        except Exception as exc:
            # pysyncobj only logs a failed load and carries on with an empty state;
            # remember it so that start() refuses to serve stale definitions.
            self.dump_error = exc
            raise
        with self.lock:
            self.state = state
        self._emit({"op": "reset"}, {"ok": True, "state": state.snapshot(),
                                     "raft_index": last[1]})
        return last, prev, cluster


class DefinitionsMachine(SyncObj):
    """The pysyncobj object: one replicated method, applying one definition command.

    Keep it to exactly this one ``@replicated`` method: pysyncobj numbers them by sorted
    name, so adding one renumbers the others and nodes running different code would apply
    each other's commands wrongly.  New kinds of change are new ops of `DefinitionState`.
    """

    def __init__(
        self, self_address: str, peers: list[str], conf: SyncObjConf, replica: _Replica,
        transport_class: Callable[..., Any] = SecretCheckingTransport,
    ) -> None:
        # Set before SyncObj.__init__: pysyncobj takes attributes existing at that point
        # for its own and never serializes them (and we serialize with our own code).
        self._replica = replica
        # pysyncobj builds its journal itself (createJournal, looked up in its module) and
        # never fsyncs it: hand it ours for the length of the constructor
        original = _pysyncobj_module.createJournal
        with _CONSTRUCTING:
            _pysyncobj_module.createJournal = _durable_journal
            try:
                super().__init__(self_address, peers, conf=conf, transportClass=transport_class)
            finally:
                _pysyncobj_module.createJournal = original

    @replicated
    def apply_command(self, blob: bytes) -> dict[str, Any]:
        # applying acknowledges the change to its client: the entry must be on disk first
        journal = getattr(self, "_SyncObj__raftLog", None)
        if isinstance(journal, DurableJournal):
            journal.sync()
        return self._replica.apply_blob(blob)


_CONSTRUCTING = threading.Lock()


def _durable_journal(journal_file: str | None) -> Any:
    from pysyncobj.journal import MemoryJournal
    return DurableJournal(journal_file) if journal_file else MemoryJournal()


class _Wakeup:
    """A pipe in pysyncobj's poller that ends its tick's sleep.

    On a cluster of one, a change appended in tick N is committed in tick N+1, and
    nothing (no follower's reply) ends tick N's poll, so each change would wait the whole
    autoTickPeriod (50 ms).  While a change of ours is uncommitted we poke this pipe at the
    end of every tick.  Multi-node clusters don't need it: followers' replies wake the poll.
    """

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self.armed = False

    def arm(self, poller: Any) -> None:
        poller.subscribe(self._r, self._drain, POLL_EVENT_TYPE.READ)
        self.armed = True

    def notify(self) -> None:
        try:
            os.write(self._w, b"!")
        except (BlockingIOError, OSError):
            pass  # full (already notified) or closed

    def _drain(self, fd: int, event: int) -> None:
        try:
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


class MetadataStore:
    """The replicated definitions, used from one asyncio event loop.

    Subscribe before `start()` to see the journal replay; `snapshot()` is always current
    for what this node has applied.
    """

    def __init__(
        self,
        *,
        self_address: str,
        peers: list[str],
        data_dir: str,
        secret: str | None,
        loop: asyncio.AbstractEventLoop | None = None,
        cluster_id: str = "",
    ) -> None:
        self._self_address = normalize_address(self_address)
        others: list[str] = []
        for peer in peers:
            address = normalize_address(peer)
            if address != self._self_address and address not in others:
                others.append(address)
        if others and not secret:
            raise ValueError("a cluster of more than one node needs a cluster secret")
        self._peers = others
        host, _, port = self._self_address.rpartition(":")
        if secret:
            self._secret = secret
            # the address it is given, not every interface: a node on a host with a public
            # and a private network keeps its Raft port on the private one
            self._bind_address = f"{host}:{port}"
        else:
            # A cluster of one without a secret: nobody may speak to its Raft port (it
            # unpickles what it reads), so listen on loopback with a secret nobody knows.
            self._secret = secrets.token_urlsafe(32)
            self._bind_address = f"127.0.0.1:{port}"
        self._raft_dir = os.path.join(data_dir, "raft")
        self._loop = loop
        self._listeners: list[Listener] = []
        self.applied_here = 0  # see `_advance`
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._replica = _Replica(self._emit_from_tick, cluster_id)
        self._machine: DefinitionsMachine | None = None
        self._transport: SecretCheckingTransport | None = None
        self._wakeup: _Wakeup | None = None
        self._tokens = itertools.count(1)
        self._futures: dict[int, asyncio.Future[dict[str, Any]]] = {}  # loop thread only
        self._uncommitted: set[int] = set()  # read by the tick thread (set ops are atomic)
        self._closed = False
        self._leader_watch: asyncio.Future[None] | None = None
        self._handoff: asyncio.Future[None] | None = None
        self._transfer_to: str | None = None  # read and cleared by the tick thread
        self._last_contact = 0.0  # majority_contact's last answer while one was known
        self._digest_task: asyncio.Future[None] | None = None
        # members whose addition was sent but whose outcome is not known yet (address ->
        # why); settled by the membership itself (status()) or by a later answer
        self.joining: dict[str, str] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self, timeout: float = 30.0) -> None:
        """Start Raft and return once a leader is known and everything committed before
        this call is applied here (journal replayed, events delivered).

        Raises ClusterUnavailable if no quorum forms within `timeout` (Raft keeps running:
        call start() again or close()), OSError if the Raft port is taken, RuntimeError if
        the full dump on disk cannot be read.
        """
        if self._closed:
            raise RuntimeError("metadata store is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("MetadataStore.start() called from a different event loop")
        deadline = loop.time() + timeout
        if self._machine is None:
            self._check_port_free()
            os.makedirs(self._raft_dir, exist_ok=True)
            self._wakeup = _Wakeup()
            # Built in a worker thread: the constructor derives the secret's key (PBKDF2,
            # 100k rounds) and reads the whole journal.
            self._machine = await asyncio.to_thread(
                self._create_machine, threading.current_thread()
            )
            if self._peers:
                self._leader_watch = asyncio.ensure_future(watch_leader(self))
                self._handoff = asyncio.ensure_future(hand_off_leadership(self))
                self._digest_task = asyncio.ensure_future(self._check_digests())
        machine = self._machine
        while True:
            if self._closed:
                raise ClusterUnavailable("metadata store closed during start")
            if self._replica.dump_error is not None:
                # pysyncobj would carry on with an empty state and never apply again.
                await self.close()
                raise RuntimeError(
                    f"cannot load the definitions dump in {self._raft_dir}: "
                    f"{self._replica.dump_error}"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ClusterUnavailable(
                    f"cluster has no quorum: no Raft leader within {timeout:g} s "
                    f"(self {self._self_address}, peers {', '.join(self._peers) or 'none'})"
                )
            if machine._getLeader() is not None and _has_quorum(machine):
                try:
                    await self._replicate(machine, _BARRIER, min(remaining, 5.0))
                except ClusterUnavailable:
                    pass
                else:
                    return
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        """Stop Raft (the journal stays on disk) and fail changes still waiting."""
        if self._closed:
            return
        self._closed = True
        for task in (self._leader_watch, self._handoff):
            if task is not None:
                task.cancel()
        if self._digest_task is not None:
            self._digest_task.cancel()
        machine, self._machine = self._machine, None
        if machine is not None:
            machine.destroy()
            if self._wakeup is not None:
                self._wakeup.notify()  # end the tick thread's sleep: it exits at once
            await asyncio.to_thread(machine.destroy_synchronous)
        if self._wakeup is not None:
            self._wakeup.close()
            self._wakeup = None
        for future in self._futures.values():
            if not future.done():
                future.set_exception(
                    ClusterUnavailable("metadata store closed: definition change abandoned")
                )

    def _check_port_free(self) -> None:
        # pysyncobj retries a failed bind forever in the background; say it now instead.
        host, _, port = self._bind_address.rpartition(":")
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, int(port)))
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot listen on the Raft port {self._bind_address}: {exc}"
            ) from exc
        finally:
            probe.close()

    def _create_machine(self, owner: threading.Thread) -> DefinitionsMachine:
        conf = SyncObjConf(
            # pysyncobj's default batches entries every appendEntriesPeriod: ~100 ms per
            # change.  Unbatched, an entry is sent (and acked) at once: ~1 ms.
            appendEntriesUseBatch=False,
            # Without files pysyncobj keeps the log in memory only.
            journalFile=os.path.join(self._raft_dir, "journal"),
            fullDumpFile=os.path.join(self._raft_dir, "dump"),
            # Nodes join and leave a running cluster (addNodeToCluster/removeNodeFromCluster).
            dynamicMembershipChange=True,
            # Fernet-encrypts and authenticates every Raft message: the port unpickles.
            password=self._secret,
            bindAddress=self._bind_address,
            # Snapshots are written by our serializer on the tick thread, never from a
            # fork(): the node holds LMDB environments, which a forked child must not touch.
            useFork=False,
            serializer=self._replica.serialize,
            deserializer=self._replica.deserialize,
            # A restart replays at most ~5000 short commands (well under a second).  A dump
            # is the whole state packed on the tick thread: ~50 ms for 10k queues + 10k
            # bindings (2.5 MB), at most every 5 minutes.
            logCompactionMinEntries=5000,
            logCompactionMinTime=300,
            # Refuse a change at once when there is no leader instead of queueing it;
            # start() does its own waiting.
            commandsWaitLeader=False,
            # Reconnect to a restarted peer after 1 s instead of 5 s.
            connectionRetryTime=1.0,
            # A leader cut off from the majority steps down after 5 s instead of 30 s, so
            # status() stops calling it leader (it could never commit anyway).
            leaderFallbackTimeout=5.0,
            # A follower calls an election after 0.4-0.8 s without the leader's heartbeat
            # (every 0.1 s) instead of 0.4-1.4 s: when the leader dies with vhosts it owns,
            # their failover waits for the next leader (serve again within 1 s).
            raftMinTimeout=RAFT_MIN_TIMEOUT,
            raftMaxTimeout=RAFT_MAX_TIMEOUT,
            # pysyncobj's default (3.5 s), which must not be below the election timeout
            connectionTimeout=max(3.5, RAFT_MAX_TIMEOUT),
            # pysyncobj caches a peer's address for 10 minutes (a failed lookup for 30 s):
            # a container recreated with a new address, or not yet in DNS when this node
            # starts, would stay unreachable that long.  A lookup per reconnect is cheap.
            dnsCacheTime=2.0,
            dnsFailCacheTime=1.0,
            # Two followers exchange nothing, so a link to a peer that vanished without a
            # reset (a killed container's address is gone) stays "connected" until TCP
            # keepalive notices: after 2 s idle, 3 probes 1 s apart (default 16 + 3 x 5 s),
            # and the restarted peer is connected to again at once.
            tcp_keepalive=(2, 1, 3),
            autoTick=True,
        )

        def transport(*args: Any) -> SecretCheckingTransport:
            self._transport = SecretCheckingTransport(*args)
            return self._transport

        machine = DefinitionsMachine(self._self_address, self._peers, conf, self._replica,
                                     transport)
        # pysyncobj ends its tick thread when the thread that built the SyncObj ends, so
        # that a forgotten SyncObj doesn't keep the process alive.  That thread is this
        # short-lived worker: hand the role to the event loop's thread, as if built there.
        if hasattr(machine, "_SyncObj__mainThread"):
            machine._SyncObj__mainThread = owner
        else:  # pragma: no cover - a pysyncobj that renamed it
            logger.warning("pysyncobj internals changed: tick thread bound to a worker")
        wakeup = self._wakeup
        assert wakeup is not None

        def on_tick() -> None:  # tick thread, right before it sleeps in poll()
            if not wakeup.armed:
                wakeup.arm(machine._poller)
            target, self._transfer_to = self._transfer_to, None
            if target is not None:
                machine.transferLeadership(target)
            if self._uncommitted and not machine.otherNodes:
                wakeup.notify()

        machine.addOnTickCallback(on_tick)
        return machine

    # ------------------------------------------------------------------ changes

    async def submit(self, command: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Commit one definition change; return `DefinitionState.apply`'s result.

        A refused command (``{"ok": False, ...}``) is committed too and returned as is.
        Raises ClusterUnavailable when the change cannot be committed; after a timeout or
        an unknown outcome it may still be applied later (an event will say so).
        """
        machine = self._machine
        if machine is None or self._closed:
            raise ClusterUnavailable("metadata store is not running: definition change refused")
        if not isinstance(command, dict) or not isinstance(command.get("op"), str):
            raise ValueError(f"a definition command is a dict with an 'op', got {command!r}")
        blob = msgpack.packb(command, use_bin_type=True)
        if machine._getLeader() is None and _has_quorum(machine):
            # a majority is connected: an election is under way (a leader's death, or
            # one handing its role away, cluster/leader_handoff.py); it takes milliseconds
            deadline = time.monotonic() + ELECTION_WAIT
            while machine._getLeader() is None and time.monotonic() < deadline \
                    and not self._closed:
                await asyncio.sleep(0.01)
        if machine._getLeader() is None:
            raise ClusterUnavailable(
                "cluster has no quorum: definition change refused (no Raft leader)"
            )
        if not _has_quorum(machine):
            raise ClusterUnavailable(
                "cluster has no quorum: definition change refused "
                "(this node reaches less than a majority)"
            )
        return await self._replicate(machine, blob, timeout)

    async def _replicate(
        self, machine: DefinitionsMachine, blob: bytes, timeout: float
    ) -> dict[str, Any]:
        assert self._loop is not None
        token = next(self._tokens)
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._futures[token] = future
        self._uncommitted.add(token)

        def on_commit(result: Any, error: int) -> None:
            # Tick thread, right after the entry was applied here (so after its event was
            # queued to the loop), or on failure.
            self._uncommitted.discard(token)
            self._call_soon(self._resolve, token, result, error)

        try:
            machine.apply_command(blob, callback=on_commit)
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise ClusterUnavailable(
                f"cluster has no quorum: definition change not committed within {timeout:g} s"
                " (it may still be applied)"
            ) from None
        finally:
            self._futures.pop(token, None)
            self._uncommitted.discard(token)

    def _resolve(self, token: int, result: Any, error: int) -> None:
        future = self._futures.get(token)
        if future is None or future.done():
            return
        if error == FAIL_REASON.SUCCESS:
            future.set_result(result)
        else:
            reason = _FAIL_TEXT.get(error, f"pysyncobj failure {error}")
            future.set_exception(
                ClusterUnavailable(f"cluster has no quorum: definition change refused ({reason})")
            )

    # ------------------------------------------------------------------ divergence

    async def _check_digests(self) -> None:
        """While this node leads: a divergence check after its election, then at most
        every `definitions_digest.INTERVAL` seconds while definitions change (cluster/definitions_digest.py)."""
        leading = False
        checked_changes = -1
        last = 0.0
        marks = itertools.count(1)
        loop = asyncio.get_running_loop()
        while not self._closed:
            await asyncio.sleep(0.5)
            if self.status().get("state") != "leader":
                leading = False
                continue
            due = not leading or (self._replica.changes != checked_changes
                                  and loop.time() - last >= definitions_digest.INTERVAL)
            leading = True
            if not due:
                continue
            checked_changes = self._replica.changes
            mark_id = f"{self._self_address}/{self.status().get('term')}/{next(marks)}"
            try:
                marked = await self.submit({"op": "digest_mark", "id": mark_id})
                await self.submit({"op": "digest_check", "id": mark_id, "by":
                                   self._self_address, "digest": marked.get("digest", "")})
                last = loop.time()
            except (ClusterUnavailable, ValueError) as exc:
                logger.debug("definitions check %s not committed: %s", mark_id, exc)
                leading = False  # try again at the next turn

    def digest_status(self) -> dict[str, Any]:
        """This node's divergence checks: how many, and the last disagreement if any."""
        return self._replica.digests.describe()

    @property
    def cluster_id(self) -> str:
        return self._replica.cluster_id

    # ------------------------------------------------------------------ events

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(command, result)`` on the loop thread for every committed
        command, in commit order, from any node, replays included; after loading a full
        dump, ``listener({"op": "reset"}, {"ok": True, "state": <snapshot>})``."""
        self._listeners.append(listener)

    def _emit_from_tick(self, command: dict[str, Any], result: dict[str, Any]) -> None:
        # the entry being applied is the one after pysyncobj's last applied (it counts it
        # once the apply returns); a loaded dump says where it ends
        index = int(result.get("raft_index") or 0) if command.get("op") == "reset" else \
            self._last_applied() + 1
        self._call_soon(self._dispatch, command, result, index)

    def _last_applied(self) -> int:
        return int(getattr(self._machine, "_SyncObj__raftLastApplied", 0) or 0)

    def _dispatch(self, command: dict[str, Any], result: dict[str, Any],
                  index: int = 0) -> None:
        for listener in list(self._listeners):
            try:
                listener(command, result)
            except Exception:
                logger.exception("definitions listener failed on %r", command.get("op"))
        if index > self.applied_here:
            self._advance(index)

    # ------------------------------------------------------------------ applied here
    # `applied_here` is the Raft index of the last change this node's listeners (its
    # runtime) have applied, on the loop.  Another node that made a change and then asks
    # this one to act on it (a queue link's request) names its own index; this node waits
    # until it has applied as much, so a declare, bind or move made there is known here.

    def _advance(self, index: int) -> None:
        self.applied_here = index
        if self._applied_waiters:
            waiting, self._applied_waiters = self._applied_waiters, []
            for target, fut in waiting:
                if target <= index:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    self._applied_waiters.append((target, fut))

    def snapshot_applied(self) -> tuple[dict[str, Any], int]:
        """A snapshot and the Raft index it reflects at least (the runtime built from it
        has applied that much)."""
        with self._replica.lock:
            return self._replica.state.snapshot(), self._last_applied()

    def runtime_built(self, index: int) -> None:
        """The runtime was built from a snapshot at ``index``."""
        if index > self.applied_here:
            self._advance(index)

    async def wait_applied(self, index: int, timeout: float) -> bool:
        """Whether this node's runtime has applied Raft index ``index`` within ``timeout``."""
        if index <= self.applied_here:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._applied_waiters.append((index, fut))
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def _call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the loop is closed: nobody is left to tell

    # ------------------------------------------------------------------ reading

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of the definitions as applied on this node."""
        with self._replica.lock:
            return self._replica.state.snapshot()

    def queues_of(self, vhost: str) -> list[dict[str, Any]]:
        """Copies of one vhost's queue records (a shard changing owner rebuilds its queues
        from them; a whole snapshot would copy every vhost's definitions)."""
        with self._replica.lock:
            return self._replica.state.list_queues(vhost)

    def status(self) -> dict[str, Any]:
        """This node's view of the Raft cluster (pysyncobj's getStatus(), renamed)."""
        machine = self._machine
        if machine is None:
            return {
                "self": self._self_address,
                "started": False,
                "leader": None,
                "state": "stopped",
                "has_quorum": False,
                "partners": {peer: "disconnected" for peer in self._peers},
            }
        raw: dict[str, Any] = {}
        for _ in range(200):
            try:
                # Read from the loop while the tick thread mutates: a dict may change size
                # under us; the next try almost always succeeds (the GIL switches rarely).
                raw = machine.getStatus()
                break
            except RuntimeError:
                continue
        leader = raw.get("leader")
        prefix = "partner_node_status_server_"
        return {
            "self": self._self_address,
            "started": True,
            "ready": machine.isReady(),
            "leader": str(leader) if leader is not None else None,
            "state": _RAFT_STATES.get(raw.get("state", -1), "?"),
            "term": raw.get("raft_term"),
            "commit_index": raw.get("commit_idx"),
            "last_applied": raw.get("last_applied"),
            "leader_commit_index": raw.get("leader_commit_idx"),
            "log_len": raw.get("log_len"),
            "has_quorum": raw.get("has_quorum"),
            "partners": {
                key[len(prefix) :]: "connected" if value == 2 else "disconnected"
                for key, value in raw.items()
                if key.startswith(prefix)
            },
        }

    def silences(self) -> dict[str, float]:
        """On the leader: how long each member (by Raft address) has not answered it; empty
        elsewhere.  A member connected but silent this long cannot be in the majority: it
        lost its disk, or its tick thread is stuck."""
        machine = self._machine
        if machine is None:
            return {}
        now = time.monotonic()
        for _ in range(50):
            try:
                if getattr(machine, "_SyncObj__raftState", None) != _LEADER_STATE:
                    return {}
                answers = dict(getattr(machine, "_SyncObj__lastResponseTime", {}))
                return {str(getattr(node, "address", node)): now - t
                        for node, t in answers.items()}
            except RuntimeError:
                continue
        return {}

    def majority_contact(self) -> float:
        """When (time.monotonic()) this node last knew a Raft majority was with it: a
        leader, the time by which a majority of the members had answered it; a follower,
        the leader's last heartbeat (pysyncobj resets the election deadline, 0.4-0.8 s
        ahead, on each: counted from its far end, so the answer is never late).  A
        follower's leader steps down after 5 s without a majority of its own; in a cluster
        of three the two of them are one.  While an election runs (no leader known, or
        one called early), the last contact it knew: the lease runs from there, rather
        than lapsing on every owner the moment the Raft leader dies.  0.0 before any."""
        machine = self._machine
        if machine is None:
            return 0.0
        now = time.monotonic()
        for _ in range(50):
            try:
                state = getattr(machine, "_SyncObj__raftState", None)
                others = list(getattr(machine, "_SyncObj__otherNodes", ()))
                if state == _LEADER_STATE:
                    if not others:
                        return self._contact(now)
                    answers = getattr(machine, "_SyncObj__lastResponseTime", {})
                    times = sorted((answers.get(n, 0.0) for n in others), reverse=True)
                    # a majority of all members, this one included
                    need = (len(others) + 1) // 2
                    return self._contact(times[need - 1] if need else now)
                if state == _FOLLOWER_STATE and machine._getLeader() is not None:
                    deadline = getattr(machine, "_SyncObj__raftElectionDeadline", 0.0)
                    if deadline == 0:  # an election called early (leader_watch)
                        return self._last_contact
                    return self._contact(float(deadline) - RAFT_MAX_TIMEOUT)
                # an election (no leader known): the last contact known, not "never" —
                # otherwise every owner stops serving the moment the Raft leader dies
                return self._last_contact
            except RuntimeError:  # a dict changed size under the tick thread
                continue
        return self._last_contact

    def _contact(self, when: float) -> float:
        self._last_contact = max(self._last_contact, when)
        return when

    def waiting_reason(self) -> str:
        """Why this node has no usable Raft cluster yet, for the log while start() waits."""
        st = self.status()
        members = 1 + len(self._peers)
        connected = sorted(p for p, v in st["partners"].items() if v == "connected")
        down = sorted(p for p in self._peers if p not in connected)
        mismatched = self._transport.recent_mismatches() if self._transport else []
        parts = [f"{1 + len(connected)} of {members} Raft members reachable "
                 f"(a majority is {members // 2 + 1})"]
        if down:
            parts.append("waiting for " + ", ".join(down))
        if mismatched:
            parts.append("cluster secret differs on " + ", ".join(mismatched))
        foreign = dict(self._transport.foreign) if self._transport else {}
        if foreign:
            parts.append("refused as members of another cluster: " + ", ".join(
                f"{peer} ({cid})" for peer, cid in sorted(foreign.items())))
        if not down and st.get("leader") is None:
            parts.append("no leader elected yet")
        return "; ".join(parts)

    # ------------------------------------------------------------------ membership

    async def add_node(self, address: str, timeout: float = 10.0) -> None:
        """Add a Raft member (the new node starts after this returns, listing every
        member as its peers: pysyncobj's membership rule, issue #89)."""
        await self._change_membership("add", normalize_address(address), timeout)

    async def remove_node(self, address: str, timeout: float = 10.0) -> None:
        await self._change_membership("remove", normalize_address(address), timeout)

    async def _change_membership(self, kind: str, address: str, timeout: float) -> None:
        machine = self._machine
        if machine is None or self._closed:
            raise ClusterUnavailable("metadata store is not running: membership change refused")
        if machine._getLeader() is None or not _has_quorum(machine):
            raise ClusterUnavailable("cluster has no quorum: membership change refused")
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()

        def done(result: Any, error: int) -> None:
            def resolve() -> None:
                if future.done():
                    return
                if error == FAIL_REASON.SUCCESS:
                    future.set_result(None)
                    return
                reason = _FAIL_TEXT.get(error, f"pysyncobj failure {error}")
                kind_of = MembershipPending if error in _UNKNOWN_OUTCOMES else ClusterUnavailable
                future.set_exception(kind_of(
                    f"membership change ({kind} {address}) refused: {reason}"))
            self._call_soon(resolve)

        if kind == "add":
            self.joining[address] = "the change is being committed"
            machine.addNodeToCluster(address, callback=done)
        else:
            self.joining.pop(address, None)
            machine.removeNodeFromCluster(address, callback=done)
        try:
            async with asyncio.timeout(timeout):
                await future
        except (TimeoutError, MembershipPending) as exc:
            why = (f"not committed within {timeout:g} s" if isinstance(exc, TimeoutError)
                   else str(exc).rpartition(": ")[2])
            if kind == "add":
                # it may still be committed: "joining" until the configuration says
                self.joining[address] = f"outcome unknown ({why})"
                raise MembershipPending(
                    f"membership change ({kind} {address}): outcome unknown ({why}); it "
                    "shows as joining until the Raft configuration settles it") from None
            raise ClusterUnavailable(
                f"membership change ({kind} {address}): outcome unknown ({why})") from None
        except ClusterUnavailable:
            if kind == "add":
                self.joining.pop(address, None)  # refused: certainly not a member
            raise
        if kind == "add":
            self.joining.pop(address, None)
            if address not in self._peers:
                self._peers.append(address)
        elif kind == "remove" and address in self._peers:
            self._peers.remove(address)

    def settle_joining(self) -> dict[str, str]:
        """Members still joining (address -> why), after settling those the Raft
        configuration now includes (the change was committed after all)."""
        if self.joining:
            partners = self.status().get("partners", {})
            for address in list(self.joining):
                if address in partners:
                    del self.joining[address]
                    if address not in self._peers:
                        self._peers.append(address)
        return dict(self.joining)

    @property
    def closed(self) -> bool:
        return self._closed

    def call_election(self) -> None:
        """Stand for election at the next tick instead of waiting out the timeout (see
        `cluster.leader_watch`): pysyncobj's own deadline, moved to now."""
        machine = self._machine
        if machine is None:
            return
        if hasattr(machine, "_SyncObj__raftElectionDeadline"):
            machine._SyncObj__raftElectionDeadline = 0
        else:  # pragma: no cover - a pysyncobj that renamed it
            logger.warning("pysyncobj internals changed: cannot call an election early")
        if self._wakeup is not None:
            self._wakeup.notify()

    def vhost_owners(self) -> tuple[dict[str, int], set[str]]:
        """Vhosts owned per member's Raft address, and the Raft addresses of all owners
        (`cluster.leader_handoff`; "moving" counts 1 while a vhost is being moved).  A vhost
        whose owner has no known address counts as
        owned by an unknown member ("?"), which never counts as connected."""
        owned: dict[str, int] = {}
        with self._replica.lock:
            state = self._replica.state
            for vhost in state.vhosts.values():
                if vhost.get("moving_to"):
                    owned["moving"] = 1  # a move under way: see `cluster.leader_handoff`
                owner = vhost.get("owner")
                if not owner:
                    continue
                raft_address = (state.nodes.get(owner) or {}).get("raft") or ""
                try:
                    address = normalize_address(raft_address) if raft_address else "?"
                except ValueError:
                    address = "?"
                owned[address] = owned.get(address, 0) + 1
        return owned, set(owned) - {"moving"}

    def changes_in_flight(self) -> bool:
        return bool(self._uncommitted)

    def transfer_leadership(self, target: str) -> None:
        """Ask pysyncobj, on its tick thread, to hand leadership to ``target`` (a Raft
        address): it sends TimeoutNow if the target's log matches, else does nothing."""
        self._transfer_to = normalize_address(target)
        if self._wakeup is not None:
            self._wakeup.notify()

    def voted_this_term(self) -> bool:
        """Whether this node has voted (for itself or another) in its current Raft term:
        a follower with no leader that has not voted refused the candidate that moved it
        to this term (see `cluster.leader_watch`)."""
        machine = self._machine
        return machine is None or getattr(machine, "_SyncObj__votedForNodeId", 0) is not None

    @property
    def self_address(self) -> str:
        return self._self_address

    def request_compaction(self) -> None:
        """Ask pysyncobj to write a full dump and truncate the journal at its next tick."""
        if self._machine is not None:
            self._machine.forceLogCompaction()
