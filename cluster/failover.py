"""The failover controller: on the Raft leader only, it promotes an in-sync replica of
every vhost whose owner is gone, and gives under-replicated vhosts new replicas.

Failover (decision rules in `cluster.replication`): when `Liveness` says the
owner is gone, ask the vhost's in-sync replicas for their store positions, promote the one
with the highest offset with one committed Raft entry (owner and epoch change together,
compare-and-set on the epoch, and the state machine refuses a target that is not in sync).
With no in-sync replica answering, the vhost stays unavailable (no unclean promotion)
until its owner returns; `unavailable` says why, for the API, logs and clients.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cluster import placement, shards
from cluster.liveness import Liveness, Positions

log = logging.getLogger("warren.failover")

TICK = 0.02  # a new leader reacts to a dead owner within this
REPAIR_EVERY = 1.0  # replica repairs are not urgent; owners' deaths are

Submit = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class FailoverController:
    def __init__(self, me: str, liveness: Liveness, submit: Submit,
                 is_leader: Callable[[], bool],
                 definitions: Callable[[], tuple[dict[str, dict], dict[str, dict]]],
                 local_positions: Callable[[], Positions], default_factor: int,
                 raft_connected: Callable[[], set[str]] = set,
                 raft_silence: Callable[[str], float] = lambda _name: 0.0) -> None:
        self.me = me
        self.liveness = liveness
        self._submit = submit
        self._is_leader = is_leader
        self._definitions = definitions  # () -> (vhost records, nodes)
        self._local_positions = local_positions
        self.default_factor = default_factor
        self._raft_connected = raft_connected  # () -> names of members Raft talks to
        # name -> seconds it has not answered this leader's Raft messages
        self._raft_silence = raft_silence
        self.unavailable: dict[str, str] = {}  # vhost -> why (only on the leader)
        self.failovers = 0
        self._task: asyncio.Task[None] | None = None
        self._leading = False
        self._busy: set[str] = set()
        self._repaired_at = 0.0

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.liveness.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                if self._is_leader():
                    if not self._leading:
                        log.info("this node leads the cluster: watching vhost owners")
                        self._leading = True
                    await self._tick()
                elif self._leading:
                    self._leading = False
                    self.liveness.stop()
                    self.unavailable.clear()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("failover controller tick failed")

    async def _tick(self) -> None:
        vhosts, nodes = self._definitions()
        self.liveness.watch({n: d.get("forward", "") for n, d in nodes.items()})
        talking = self._raft_connected()
        for name, v in vhosts.items():
            owner = v.get("owner")
            if owner is None or owner == self.me or name in self._busy:
                continue
            why = self.liveness.dead(owner, owner in talking)
            silent = self._raft_silence(owner)
            if why is None and silent > self.liveness.timeout:
                # its cluster port answers, but it is out of Raft (a disk it cannot write, a
                # stuck tick): its lease has lapsed, so it serves nothing; someone must
                why = f"its Raft has not answered for {silent:.1f} s"
            if why is None:
                self.unavailable.pop(name, None)
                continue
            self._busy.add(name)
            asyncio.ensure_future(self._fail_over(name, v, why))
        if time.monotonic() - self._repaired_at >= REPAIR_EVERY:
            self._repaired_at = time.monotonic()
            await self._repair(vhosts, nodes)

    async def _fail_over(self, name: str, v: dict[str, Any], why: str) -> None:
        try:
            started = time.monotonic()
            candidates = [r for r in v.get("in_sync", [])
                          if r == self.me or self.liveness.dead(r) is None]
            positions: dict[str, Positions] = await self.liveness.positions(
                [r for r in candidates if r != self.me])
            if self.me in candidates:
                positions[self.me] = self._local_positions()
            offsets = {n: p[name] for n, p in positions.items() if name in p}
            vhosts, nodes = self._definitions()
            confirmed = placement.confirmed_mark(v, offsets)
            choice = placement.promotion_choice(v.get("in_sync", []), offsets,
                                                placement.load(vhosts.values(), nodes),
                                                confirmed)
            if choice is None:
                in_sync = v.get("in_sync", [])
                short = (f"; {sum(n in offsets for n in in_sync)} of its {len(in_sync)} "
                         "in-sync replicas answered, two must"
                         if placement.too_few_answers(in_sync, offsets) else "")
                text = (f"vhost '{name}' is unavailable: its owner {v['owner']} is down "
                        f"({why}) and no in-sync replica with a complete copy (offset "
                        f"{confirmed} confirmed) can take over (no unclean promotion"
                        f"{short}); it returns with its owner")
                if self.unavailable.get(name) != text:
                    log.error("%s", text)
                self.unavailable[name] = text
                return
            # The copy left out of the newest confirms (`ReplicationSource.required`) may
            # stay in sync under the new owner until it has caught up: the promoted copy's
            # end becomes the confirmed mark, so that copy is never promoted meanwhile.
            result = await self._submit({
                "op": "set_vhost_owner", "name": name, "owner": choice,
                "expected_epoch": v["epoch"], "require_in_sync": True,
                "confirmed": int(offsets[choice][1])})
            if result.get("ok"):
                self.failovers += 1
                self.unavailable.pop(name, None)
                log.warning("%s: owner %s is down (%s): promoted in-sync replica %s "
                            "at offset %s, epoch %s, in %.0f ms", shards.label(name), v["owner"], why,
                            choice, offsets[choice][1], result.get("epoch"),
                            (time.monotonic() - started) * 1000)
            else:
                log.info("%s: promotion of %s refused: %s", shards.label(name), choice,
                         result.get("text"))
        except Exception as e:
            log.warning("%s: failover attempt failed: %s", shards.label(name), e)
        finally:
            self._busy.discard(name)

    async def _repair(self, vhosts: dict[str, dict], nodes: dict[str, dict]) -> None:
        members = sorted(nodes)
        counts = placement.load(vhosts.values(), members)
        for name, v in vhosts.items():
            if v.get("owner") is None or name in self._busy:
                continue
            want = placement.wanted_replicas(v, self.default_factor, len(members))
            replicas = placement.repaired_replicas(v, members, want, counts)
            if replicas == v.get("replicas", []):
                continue
            self._busy.add(name)
            try:
                result = await self._submit({"op": "set_vhost_replicas", "name": name,
                                             "replicas": replicas,
                                             "expected_epoch": v["epoch"]})
                if result.get("ok"):
                    log.info("%s: replicas %s (wanted %d)", shards.label(name), replicas, want)
            except Exception as e:
                log.warning("%s: could not set replicas: %s", shards.label(name), e)
            finally:
                self._busy.discard(name)
            self._repaired_at = 0.0  # more may be due: look again at the next tick
            return  # one change at a time: the next tick sees the committed state
