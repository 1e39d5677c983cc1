"""This node's part in vhost replication: which role it plays for each vhost (owner,
replica or none), wired to the vhost stores and the runtime; the sessions on the cluster
port; the leader's failover controller; and the live move of a vhost.

The mechanisms live in cluster/ (replication stream, in-sync bookkeeping, followers,
liveness, failover) and storage/ (change log, snapshots); this module only decides, from
the committed placement, which of them runs here, and ties them to queues and clients.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from cluster import shards, wire
from cluster.digest import DigestServer
from cluster.failover import FailoverController
from cluster.follower import Follower
from cluster.liveness import Liveness, PingServer
from cluster.move_progress import MoveProgress
from cluster.replication import ReplicationSource, SourceSession
from node.amqp import errors
from node.amqp.errors import ChannelError
from node.config import Settings
from node.runtime.commit import commit
from node.runtime.in_sync_proposals import InSyncProposals
from node.runtime.placement import Placement
from node.runtime.state import Runtime
from node.runtime.stores import VhostStores

if TYPE_CHECKING:
    from cluster.raft import MetadataStore

log = logging.getLogger("warren.vhost_roles")

LEASE_CHECK = 0.05  # seconds between two looks at the owner lease
MOVE_SYNC_TIMEOUT = 120.0  # bringing the target in sync (a snapshot of a large vhost)
MOVE_DRAIN_TIMEOUT = 5.0  # the last records, publishers paused
PROGRESS_SAMPLE = 0.5  # seconds between two looks at a moving target's lag


class VhostRoles:
    """Runs, for each vhost, what the committed placement gives this node: its owner's
    replication source, a replica's follower, or nothing."""

    def __init__(self, settings: Settings, metadata: "MetadataStore", runtime: Runtime,
                 stores: VhostStores, placement: Placement) -> None:
        s = settings
        self.settings = settings
        self.metadata = metadata
        self.runtime = runtime
        self.stores = stores
        self.placement = placement
        self.me = s.node_name
        # A single node (no cluster secret, no cluster port) has nothing to replicate to.
        self.enabled = bool(s.cluster_secret)
        self.sources: dict[str, ReplicationSource] = {}
        self.followers: dict[str, Follower] = {}
        # vhost -> the epoch this process's term as its owner began at: granted by a
        # committed change seen live, or claimed (a new epoch) when the node finds itself
        # owner at start; no owner term ever reuses an epoch
        self.granted: dict[str, int] = {}
        self._claims: dict[str, asyncio.Task[None]] = {}
        # The owner lease (no delivery split-brain): an owner that has not known a Raft
        # majority for half the failover timeout stops reading its clients, writing to them
        # and confirming, until it has again; the leader fails it over only after the whole
        # timeout, so the old owner is quiet before a new owner's epoch can commit.
        self.lease = s.failover_timeout / 2
        self.lease_lapsed = False
        self._lease_task: asyncio.Task[None] | None = None
        self._lease_holds: set[Any] = set()  # the client connections the lease holds now
        self.moves = 0
        self.in_sync_proposals = InSyncProposals(metadata.submit)
        # the queue links other nodes opened to this one (node/shards/link.py LinkServer)
        self.link_sessions: set[Any] = set()
        self.moving: dict[str, MoveProgress] = {}  # unit -> its move under way here
        self.liveness = Liveness(self.me, self.connect, s.failover_timeout)
        self.controller = FailoverController(
            self.me, self.liveness, metadata.submit, self._is_leader,
            lambda: (runtime.units, runtime.nodes), self.positions,
            s.replication_factor, self._raft_connected, self._raft_silence)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.enabled:
            self.controller.start()
            self._lease_task = asyncio.ensure_future(self._watch_lease())

    async def _watch_lease(self) -> None:
        while True:
            await asyncio.sleep(LEASE_CHECK)
            try:
                silent = self._silence()
                lapsed = silent > self.lease
                if lapsed != self.lease_lapsed:
                    self.lease_lapsed = lapsed
                    if lapsed:
                        log.warning("no Raft majority heard from for %.1f s: the vhosts this "
                                    "node owns stop serving until it is back (owner lease)",
                                    silent)
                    else:
                        log.info("Raft majority heard from again: owned vhosts serve again")
                self._apply_lease()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("owner lease check failed")

    def _apply_lease(self) -> None:
        """Hold (or release) confirms and the clients of every vhost this node owns.  A
        client is released as soon as the lease no longer holds it: the lease is back, or
        its vhost is not this node's any more (a sharded vhost's shard 0 failed over while
        the lease had lapsed: its connections stay open, and must not stay held)."""
        held = self.lease_lapsed
        holding: set[Any] = set()
        links = False  # this node owns a shard: the peers' consumers over links too
        for name, source in self.sources.items():
            if source.lease_held != held:
                source.hold_for_lease(held)
            vhost, _ = shards.split(name)
            vh = self.runtime.vhosts.get(vhost)  # a shard's clients are its vhost's
            if held and vh is not None:
                holding.update(vh.connections)
                links = links or self.runtime.sharded(vhost)
        for conn in holding - self._lease_holds:
            conn.hold_reading("lease")
            conn.hold_output("lease")
        for conn in self._lease_holds - holding:
            conn.release_reading("lease")
            conn.release_output("lease")
        self._lease_holds = holding
        for link in self.link_sessions:
            if links:
                link.hold_output("lease")
            else:
                link.release_output("lease")

    async def stop(self) -> None:
        self.controller.stop()
        if self._lease_task is not None:
            self._lease_task.cancel()
        for task in list(self._claims.values()):
            task.cancel()
        for source in self.sources.values():
            source.close("the node is stopping")
        self.sources.clear()
        followers, self.followers = self.followers, {}
        for follower in followers.values():
            await follower.stop()

    def _raft_silence(self, name: str) -> float:
        """Seconds member ``name`` has not answered this node as Raft leader (0 unknown)."""
        raft = (self.runtime.nodes.get(name) or {}).get("raft")
        return self.metadata.silences().get(raft or "", 0.0)

    def _raft_connected(self) -> set[str]:
        partners = self.metadata.status().get("partners", {})
        return {name for name, node in self.runtime.nodes.items()
                if partners.get(node.get("raft")) == "connected"}

    def _is_leader(self) -> bool:
        return self.metadata.status().get("state") == "leader"

    async def connect(self, address: str, facts: dict[str, Any]
                      ) -> tuple[asyncio.Transport, wire.Link]:
        from node.clients.forwarding import open_forward
        from node.tls import cluster_client_ssl
        return await open_forward(address, self.settings.cluster_secret, facts,
                                  timeout=self.settings.failover_timeout,
                                  ssl=cluster_client_ssl(self.settings))

    def positions(self) -> dict[str, list[int]]:
        """Each copy's (epoch, offset) and the confirmed mark it knows (a ping's answer)."""
        out = {}
        for name, store in self.stores.items():
            source, follower = self.sources.get(name), self.followers.get(name)
            hw = source.hw if source is not None else follower.hw if follower else 0
            out[name] = [*store.position, hw]
        return out

    # ------------------------------------------------------------------ cluster port

    def accept(self, facts: dict[str, Any], transport: asyncio.Transport,
               link: wire.Link) -> None:
        """A session of another node on our cluster port (after its HMAC handshake)."""
        kind = facts.get("kind")
        if kind == "ping":
            PingServer(self.positions).take_over(transport, link)
            return
        if kind == "queues":  # another node works on queues this node owns
            from node.shards.link import LinkServer
            LinkServer(lambda: self.runtime.vhosts, self.runtime.owns,
                       str(facts.get("node")), self.link_sessions, applied=self.metadata,
                       replies=lambda: self.runtime.reply_channels
                       ).take_over(transport, link)
            return
        if kind == "digest":  # the owner compares the copies (node/verify.py)
            store = self.stores.get(str(facts.get("vhost")))
            DigestServer(store, f"node {self.me} holds no copy of vhost "
                                f"{facts.get('vhost')!r}").take_over(transport, link)
            return
        vhost, node = str(facts.get("vhost")), str(facts.get("node"))
        source = self.sources.get(vhost)
        d = self.runtime.units.get(vhost)
        position = facts.get("position")
        if source is None or d is None or node not in d.get("replicas", []) \
                or not (isinstance(position, list) and len(position) == 2):
            reason = f"node {self.me} does not own vhost {vhost!r} as a source for {node!r}"
            wire.say_and_close(transport, link, {"t": "refuse", "reason": reason,
                                                 "owner": d.get("owner") if d else None})
            return
        def on_fenced(epoch: int) -> None:
            self.fenced(vhost, epoch)
        session = SourceSession(source, node, (int(position[0]), int(position[1])),
                                on_fenced)
        session.start(transport, link)

    # ------------------------------------------------------------------ roles

    def role(self, name: str) -> str | None:
        d = self.runtime.units.get(name)
        if d is None:
            return None
        if d.get("owner") in (None, self.me):
            return "owner"
        return "replica" if self.me in d.get("replicas", []) else None

    def grant(self, name: str, epoch: int) -> None:
        """A committed change, seen live, made this node the owner at ``epoch``."""
        self.granted[name] = epoch

    def _claim(self, name: str, epoch: int, store: Any) -> None:
        """This node owns ``name`` at ``epoch`` but did not begin that term in this process
        (it restarted): commit a new epoch for its term before anything is numbered."""
        if name in self._claims:
            return
        store.hold()

        async def claim() -> None:
            try:
                while True:
                    d = self.runtime.units.get(name)
                    if d is None or d.get("owner") != self.me or d.get("epoch") != epoch:
                        return  # placement moved on: that change's event reconciles
                    try:
                        result = await self.metadata.submit({
                            "op": "set_vhost_owner", "name": name, "owner": self.me,
                            "expected_epoch": epoch})
                    except Exception as e:  # no quorum yet: try again
                        log.info("%s: cannot begin a new owner term yet: %s", shards.label(name), e)
                        await asyncio.sleep(0.5)
                        continue
                    if result.get("ok"):
                        log.info("%s: owner term begins at epoch %s", shards.label(name),
                                 result.get("epoch"))
                    return
            finally:
                self._claims.pop(name, None)
        self._claims[name] = asyncio.ensure_future(claim())

    def prepare_takeover(self, name: str) -> None:
        """This node is about to serve ``name``: stop taking the old owner's records (now,
        synchronously) and number new records in the new epoch, before the runtime
        recovers its queues from the store."""
        follower = self.followers.pop(name, None)
        if follower is not None:
            follower.halt()
        store = self.stores.get(name)
        d = self.runtime.units.get(name)
        if store is not None and d is not None and store.epoch != d.get("epoch", 0) \
                and (not self.enabled or self.granted.get(name) == d.get("epoch", 0)):
            store.takeover(d.get("epoch", 0))

    def step_down(self, name: str, why: str) -> None:
        """This node no longer serves ``name``: nothing pending may be confirmed, nothing
        more written locally (the runtime is torn down right after)."""
        # the store first: from then on the writer fails what this node wrote and did not
        # commit; what it committed before reaches the source, which fails it once closed
        store = self.stores.get(name)
        if store is not None:
            store.become_replica()
        source = self.sources.pop(name, None)
        if source is not None:
            source.close(why)

    def fenced(self, vhost: str, epoch: int) -> None:
        """A replica knows a newer epoch than ours: we were deposed while paused or cut
        off.  Stop confirming and close the vhost's clients before Raft even tells us."""
        if self.role(vhost) != "owner" or vhost not in self.sources:
            return
        sharded = self.runtime.sharded(shards.split(vhost)[0])
        # a sharded vhost's clients stay: its queues are rebuilt when Raft says who owns it
        log.warning("%s: a replica follows epoch %d: this node lost ownership; %s",
                    shards.label(vhost), epoch,
                    "its queues wait for Raft to name the new owner" if sharded
                    else "closing its clients")
        self.step_down(vhost, f"this node lost ownership (epoch {epoch})")
        vh = self.runtime.vhosts.get(vhost)
        if vh is not None and not sharded:
            for conn in list(vh.connections):
                conn.force_close(errors.CONNECTION_FORCED,
                                 f"vhost '{vhost}' moved: this node lost ownership "
                                 f"(epoch {epoch}); reconnect")

    def reconcile_all(self) -> None:
        for name in list(self.runtime.units):
            self.reconcile(name)
        for name in list(self.followers):
            if name not in self.runtime.units:
                self.forget(name)

    def reconcile(self, name: str) -> None:
        """Run, for ``name``, exactly what the committed placement gives this node."""
        if not self.enabled:
            return
        d = self.runtime.units.get(name)
        role = self.role(name)
        if role == "owner" and d is not None:
            store = self.stores.get(name)
            if store is None:
                return  # the runtime opens it
            if self.granted.get(name) != d.get("epoch", 0):
                self._claim(name, d.get("epoch", 0), store)
                return
            if store.epoch != d.get("epoch", 0) and not self.sources.get(name):
                self.prepare_takeover(name)
            source = self.sources.get(name)
            if not d.get("replicas"):
                if source is not None:
                    self.sources.pop(name).close("the vhost has no replicas any more")
                store.drop_changelog()
                return
            if source is not None and source.epoch != d["epoch"]:
                self.sources.pop(name).close("epoch changed")
                source = None
            if source is None:
                s = self.settings
                async def propose(node: str, join: bool, epoch: int, hw: int) -> bool:
                    return await self._propose(name, node, join, epoch, hw)
                self.sources[name] = ReplicationSource(
                    name, store, d["epoch"], d.get("in_sync", []),
                    min_in_sync=s.min_in_sync, lag_timeout=s.failover_timeout,
                    propose=propose, may_exclude=self._majority_heard_lately)
            else:
                source.update_in_sync(d.get("in_sync", []))
            return
        source = self.sources.pop(name, None)
        if source is not None:
            source.close("this node no longer owns the vhost")
        if role == "replica" and d is not None:
            store = self.stores.open(name)
            follower = self.followers.get(name)
            if follower is None:
                follower = self.followers[name] = Follower(
                    name, self.me, store, self.connect, self.settings.failover_timeout)
            owner = d.get("owner")
            follower.follow(owner, (self.runtime.nodes.get(owner or "") or {}).get("forward"),
                            d["epoch"])
        else:
            self.forget(name, drop_copy=d is not None)

    def forget(self, name: str, drop_copy: bool = False) -> None:
        """This node holds no copy of ``name`` any more (its replica was moved elsewhere,
        or the vhost is deleted: the caller removes the files then)."""
        follower = self.followers.pop(name, None)
        if follower is not None:
            follower.halt()
        if drop_copy and name not in self.runtime.vhosts or (
                drop_copy and self.runtime.vhosts[name].store is None):
            self.stores.close(name, delete_data=True)

    def _silence(self) -> float:
        """Seconds since this node last knew a Raft majority was with it."""
        return time.monotonic() - self.metadata.majority_contact()

    def _majority_heard_lately(self) -> bool:
        """Whether this owner heard a Raft majority within half its lease, read now rather
        than at the lease's last check (which a paused process has not redone yet)."""
        return not self.lease_lapsed and self._silence() < self.lease / 2

    async def _propose(self, vhost: str, node: str, join: bool, epoch: int, hw: int) -> bool:
        cmd: dict[str, Any] = {"op": "set_in_sync", "name": vhost, "node": node,
                               "in_sync": join, "expected_epoch": epoch}
        if not join:
            cmd["confirmed"] = hw
        result = await self.in_sync_proposals.propose(cmd)
        return bool(result.get("ok"))

    # ------------------------------------------------------------------ seen from outside

    def describe(self, name: str) -> dict[str, Any]:
        """Placement and replication state of a vhost (or shard), as the API shows it; a
        sharded vhost's adds each of its shards' (the owner's figures where it is here)."""
        out = self._describe_unit(name)
        vhost, shard = shards.split(name)
        if self.runtime.sharded(vhost):
            out["name"], out["shard"] = vhost, shard
            if shard == 0:
                out["shards"] = [
                    dict(self._describe_unit(unit), name=vhost, shard=k) for k, unit in
                    enumerate(shards.units_of(vhost, self.runtime.vhost_defs.get(vhost)))]
        return out

    def _describe_unit(self, name: str) -> dict[str, Any]:
        d = self.runtime.units.get(name) or {}
        source = self.sources.get(name)
        owner = d.get("owner")
        out = {
            "name": name, "owner": owner, "epoch": d.get("epoch"),
            "replicas": list(d.get("replicas", [])), "in_sync": list(d.get("in_sync", [])),
            "replication_factor": d.get("replication_factor") or self.settings.replication_factor,
            "available": self.available(name) is None,
        }
        if source is not None:
            out["lag"] = source.lag()
            out["offset"] = source.store.last_offset
        progress = self.moving.get(name)
        if progress is not None:
            out["move"] = progress.as_json()
        why = self.available(name)
        if why is not None:
            out["reason"] = why
        return out

    def available(self, name: str) -> str | None:
        """Why the vhost cannot be served now (None when it can)."""
        d = self.runtime.units.get(name)
        if d is None or d.get("owner") in (None, self.me):
            return None
        why = self.controller.unavailable.get(name)
        if why is not None:
            return why
        owner = d["owner"]
        node = self.runtime.nodes.get(owner) or {}
        partners = self.metadata.status().get("partners", {})
        if partners.get(node.get("raft")) != "connected":
            return (f"vhost '{name}' is unavailable: its owner {owner} cannot be reached"
                    + ("" if d.get("in_sync") else
                       " and no in-sync replica can take over (no unclean promotion)"))
        return None

    # ------------------------------------------------------------------ the live move

    def target_lag(self, name: str, target: str) -> str:
        """How far ``target`` is behind on ``name``, in words (a move's last line)."""
        source = self.sources.get(name)
        lag = source.lag().get(target) if source is not None else None
        if source is None or lag is None:
            return "not connected to the owner"
        where = "connected" if target in source.sessions else "not connected"
        return f"{lag['records']} records ({lag['bytes']} bytes) behind, {where}"

    def _follow(self, name: str, progress: MoveProgress) -> None:
        """Take the target's figures into ``progress`` (and follow its catch-up's steps)."""
        source = self.sources.get(name)
        if source is None:
            progress.update(False, None, None, None)
            return
        def progressed(node: str) -> None:
            # a snapshot reports every chunk: the first is taken (the first bytes copied
            # show at once), then one look per PROGRESS_SAMPLE (the lag is counted over
            # the change log's records)
            if node == progress.target and (
                    progress.copied == 0
                    or time.monotonic() - progress.updated >= PROGRESS_SAMPLE):
                self._follow(name, progress)
        source.on_progress = progressed
        session = source.sessions.get(progress.target)
        progress.update(session is not None,
                        session.snapshot_sent if session is not None else None,
                        session.snapshot_bytes if session is not None else None,
                        source.lag().get(progress.target))

    async def move(self, name: str, target: str, sync_timeout: float = MOVE_SYNC_TIMEOUT,
                   progress: MoveProgress | None = None) -> dict[str, Any]:
        """Move ``name`` to ``target`` with its messages; run on the owner.  ``progress``
        follows its wait for the target (the API shows it while it runs)."""
        progress = progress or MoveProgress(name, target)
        if name in self.moving:
            raise ChannelError(errors.PRECONDITION_FAILED,
                               f"{shards.label(name)} is being moved already (to "
                               f"{self.moving[name].target})")
        self.moving[name] = progress
        try:
            return await self._move(name, target, sync_timeout, progress)
        except ChannelError:
            self._unpin(name, target)
            raise
        finally:
            del self.moving[name]
            source = self.sources.get(name)
            if source is not None:
                source.on_progress = None

    def _unpin(self, name: str, target: str) -> None:
        """A move that failed: its target is a replica like any other again (the repair
        may trim it when it is one copy more than wanted)."""
        d = self.runtime.units.get(name)
        if d is None or d.get("moving_to") != target or d.get("owner") != self.me:
            return

        async def unpin() -> None:
            try:
                await self.metadata.submit({
                    "op": "set_vhost_replicas", "name": name, "replicas": d["replicas"],
                    "moving_to": None, "expected_epoch": d["epoch"]})
            except Exception as e:  # no quorum: the target just stays a replica
                log.warning("%s: could not clear the failed move's target %s: %s",
                            shards.label(name), target, e)
        asyncio.ensure_future(unpin())

    async def _move(self, name: str, target: str, sync_timeout: float,
                    progress: MoveProgress) -> dict[str, Any]:
        d = self.runtime.units.get(name)
        if d is None:
            raise ChannelError(errors.NOT_FOUND, f"no {shards.label(name)}")
        if target not in self.runtime.nodes:
            raise ChannelError(errors.NOT_FOUND, f"no node '{target}' in the cluster")
        if d.get("owner") == target:
            return {"owner": target, "epoch": d["epoch"], "pause_ms": 0.0}
        if d.get("owner") != self.me:
            raise ChannelError(errors.PRECONDITION_FAILED,
                               f"{shards.label(name)} is owned by {d.get('owner')}, not {self.me}")
        if not await self.placement.wait_running(target):  # its Raft link, a flap waited out
            raise ChannelError(errors.PRECONDITION_FAILED,
                               f"cannot move {shards.label(name)} to {target}: the node is down")
        if not self.enabled:
            raise ChannelError(errors.PRECONDITION_FAILED, "a single node cannot move vhosts")
        epoch = d["epoch"]
        if target not in d.get("replicas", []):
            await commit(self.metadata, {"op": "set_vhost_replicas", "name": name,
                            "replicas": [*d.get("replicas", []), target],
                            "moving_to": target, "expected_epoch": epoch})
        deadline = time.monotonic() + sync_timeout
        sampled = 0.0
        while target not in (self.runtime.units.get(name) or {}).get("in_sync", []):
            if time.monotonic() - sampled >= PROGRESS_SAMPLE:
                self._follow(name, progress)
                sampled = time.monotonic()
            if self.runtime.units.get(name, {}).get("epoch") != epoch:
                raise ChannelError(errors.PRECONDITION_FAILED,
                                   f"cannot move {shards.label(name)}: its owner changed meanwhile")
            if time.monotonic() > deadline:
                raise ChannelError(errors.PRECONDITION_FAILED,
                                   f"cannot move {shards.label(name)}: {target} did not get in sync "
                                   f"within {sync_timeout:g} s "
                                   f"({self.target_lag(name, target)})")
            await asyncio.sleep(0.01)
        source = self.sources.get(name)
        store = self.stores.get(name)
        vh = self.runtime.vhosts.get(shards.split(name)[0])
        if source is None or store is None or vh is None:
            raise ChannelError(errors.PRECONDITION_FAILED,
                               f"{shards.label(name)} is not served here any more")
        self._follow(name, progress)
        progress.set_phase("drain")
        # publishes and acks pause, from this node's clients and from the other nodes' queue
        # links (a sharded vhost's): nothing new reaches the store
        paused = [*vh.connections, *self.link_sessions]
        started = time.monotonic()
        for conn in paused:
            conn.hold_reading("move")
        try:
            await asyncio.shield(store.flush())
            try:
                await source.drained_to(target, MOVE_DRAIN_TIMEOUT)
            except TimeoutError:
                raise ChannelError(errors.PRECONDITION_FAILED,
                                   f"cannot move {shards.label(name)}: {target} did not take the "
                                   f"last records within {MOVE_DRAIN_TIMEOUT:g} s with "
                                   f"publishers paused ({self.target_lag(name, target)})"
                                   ) from None
            result = await commit(self.metadata, {"op": "set_vhost_owner", "name": name, "owner": target,
                                     "expected_epoch": epoch, "require_in_sync": True,
                                     "old_owner_in_sync": True})
        except BaseException:
            for conn in paused:
                conn.release_reading("move")
            raise
        pause_ms = (time.monotonic() - started) * 1000
        if self.runtime.sharded(shards.split(name)[0]):
            # the shard's queues here are the new owner's now (the commit is applied): the
            # paused clients and links go on; a whole vhost's clients were closed instead
            for conn in paused:
                conn.release_reading("move")
        else:
            for link in self.link_sessions:
                link.release_reading("move")
        self.moves += 1
        log.info("%s moved to %s (epoch %s): publishers paused %.0f ms", shards.label(name),
                 target, result.get("epoch"), pause_ms)
        return {"owner": target, "epoch": result.get("epoch"), "pause_ms": round(pause_ms, 1),
                "copied_bytes": progress.copied,
                "sync_ms": round((started - progress.started) * 1000, 1)}
