"""Placement: which node runs a vhost (its `owner` in the replicated vhost record), choosing
one for a new vhost, moving one, cluster membership (join, forget) and `cluster_status`.

It reads the settings (node name and addresses), Raft's status and membership changes,
and the members and vhost records the definitions mirror keeps in the runtime state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cluster import placement as copy_placement
from cluster import shards
from node.amqp import errors
from node.amqp.errors import ChannelError
from node.config import Settings
from node.runtime.commit import commit
from node.runtime.state import Runtime

LINK_WAIT = 2.0  # seconds an admin command waits for a node's Raft link before "down"

if TYPE_CHECKING:
    from cluster.raft import MetadataStore


class Placement:
    """Where vhosts run and who the members are, as this node sees them."""

    def __init__(self, settings: Settings, metadata: "MetadataStore", runtime: Runtime
                 ) -> None:
        self.settings = settings
        self.metadata = metadata
        self.runtime = runtime
        # why a vhost cannot be served now (the vhost roles' answer; set once they exist)
        self.availability: Callable[[str], str | None] = lambda _vhost: None

    async def submit(self, command: dict) -> dict:
        return await commit(self.metadata, command)

    def node_record(self) -> dict:
        s = self.settings
        host = s.raft_address.rpartition(":")[0]
        return {"name": s.node_name, "raft": self.metadata.self_address,
                "forward": s.forward_address,
                "amqp": f"{host}:{s.amqp_port}", "http": f"{host}:{s.http_port}"}

    def pick_owner(self) -> str:
        """The least loaded reachable node (fewest vhosts and shards owned); ties by name."""
        return self.pick_owners(1)[0]

    async def running_members(self) -> set[str]:
        """The members running now, a link that flaps (a young cluster's, one under load)
        waited for as `wait_running` does, all at once."""
        names = sorted(self.runtime.nodes)
        up = await asyncio.gather(*(self.wait_running(n) for n in names))
        return {n for n, ok in zip(names, up, strict=True) if ok} | {self.settings.node_name}

    def pick_owners(self, count: int, first: str | None = None,
                    running: set[str] | None = None, taken: tuple[str, ...] = ()
                    ) -> list[str]:
        """Owners for ``count`` new units (a vhost's shards): each on the running node
        with the fewest of them so far, then the fewest units of any vhost (ties by name),
        so a vhost's shards spread over the nodes; ``first`` fixes the first one
        (``running``: the members known running, default those Raft is connected to;
        ``taken``: the owners of the vhost's shards that exist already)."""
        reachable = running
        if reachable is None:
            reachable = {self.settings.node_name}
            partners = self.metadata.status().get("partners", {})
            for name, node in self.runtime.nodes.items():
                if partners.get(node.get("raft")) == "connected":
                    reachable.add(name)
        load = {n: 0 for n in reachable}
        for d in self.runtime.units.values():
            if d.get("owner") in load:
                load[d["owner"]] += 1
        owners: list[str] = []
        for i in range(count):
            if i == 0 and first is not None:
                owner = first
            else:  # fewest of this vhost's shards first, then fewest units in all
                owner = min(sorted(load),
                            key=lambda n: (owners.count(n) + taken.count(n), load[n]))
            load[owner] = load.get(owner, 0) + 1
            owners.append(owner)
        return owners

    def shard_placements(self, owners: list[str], factor: int | None) -> list[list]:
        """[owner, replicas] of new shards with these owners: replicas on the least loaded
        members, counting the copies placed before."""
        members = sorted(self.runtime.nodes)
        counts = copy_placement.load(self.runtime.units.values(), members)
        out: list[list] = []
        for owner in owners:
            record: dict[str, Any] = {"owner": owner, "replicas": [],
                                      "replication_factor": factor}
            want = copy_placement.wanted_replicas(record, self.settings.replication_factor,
                                                  len(members))
            replicas = copy_placement.repaired_replicas(record, members, want, counts)
            for node in [owner, *replicas]:
                counts[node] = counts.get(node, 0) + 1
            out.append([owner, replicas])
        return out

    def node_running(self, name: str) -> bool:
        """This node, or a member this node's Raft is connected to."""
        if name == self.settings.node_name:
            return True
        raft = self.runtime.nodes.get(name, {}).get("raft")
        return self.metadata.status().get("partners", {}).get(raft) == "connected"

    async def wait_running(self, name: str, seconds: float = LINK_WAIT) -> bool:
        """Whether `name` is running, waiting up to `seconds` for its Raft link: a link
        that drops under load (or is still being made after a start) comes back within
        pysyncobj's retry time (1 s), and an operator's command should not fail on that."""
        deadline = time.monotonic() + seconds
        while not self.node_running(name):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def require_running(self, node: str) -> None:
        """Admin commands that place work on a node refuse a node that is down, rather
        than hand a vhost to a node that cannot serve it."""
        if node not in self.runtime.nodes:
            raise ChannelError(errors.NOT_FOUND, f"no node '{node}' in the cluster")
        if not await self.wait_running(node):
            raise errors.precondition(f"node '{node}' is down (not reachable from "
                                      f"{self.settings.node_name}); start it first")


    async def set_replication_factor(self, name: str, copies: int) -> None:
        """Keep ``copies`` copies of the vhost (the owner's included, capped at the
        cluster's size): replicas are added on the least loaded nodes, or trimmed."""
        v = self.runtime.vhost_defs.get(name)
        if v is None:
            raise ChannelError(errors.NOT_FOUND, f"no vhost '{name}'")
        for unit in shards.units_of(name, v):  # every shard keeps as many copies
            d = self.runtime.units.get(unit)
            if d is None:
                continue
            members = sorted(self.runtime.nodes)
            record = dict(d, replication_factor=copies)
            want = copy_placement.wanted_replicas(record, self.settings.replication_factor,
                                                  len(members))
            replicas = copy_placement.repaired_replicas(
                record, members, want,
                copy_placement.load(self.runtime.units.values(), members))
            await self.submit({"op": "set_vhost_replicas", "name": unit, "replicas": replicas,
                               "replication_factor": copies, "expected_epoch": d["epoch"]})

    async def join_node(self, raft_address: str) -> dict:
        """Add a Raft member: {"state": "joined"}, or {"state": "joining", "reason"} when
        the outcome is unknown (a leader change, a timeout): the member then shows as
        joining in cluster_status until the Raft configuration settles it."""
        from cluster.raft import ClusterUnavailable, MembershipPending
        try:
            await self.metadata.add_node(raft_address)
        except MembershipPending as e:
            return {"state": "joining", "reason": str(e)}
        except ClusterUnavailable as e:
            raise ChannelError(errors.INTERNAL_ERROR, str(e)) from None
        return {"state": "joined"}

    def stranded_by(self, name: str) -> list[str]:
        """Vhosts (and shards, as "'vhost' shard k") that forgetting ``name`` would leave
        without an owner: those it owns."""
        return sorted(unit_text(u) for u, d in self.runtime.units.items()
                      if d.get("owner") == name)

    async def forget_node(self, name: str) -> None:
        """Remove a member.  A node that still owns vhosts is refused, naming them: its
        vhosts must be moved (or failed over, which the leader does by itself once the node
        is down and an in-sync replica answers) before it goes, or they would be
        stranded with an owner that no longer exists."""
        from cluster.raft import ClusterUnavailable
        node = self.runtime.nodes.get(name)
        if node is None:
            raise ChannelError(errors.NOT_FOUND, f"no node '{name}' in the cluster")
        if name == self.settings.node_name:
            raise errors.precondition("a node cannot forget itself; run this on another node")
        owned = self.stranded_by(name)
        if owned:
            running = self.node_running(name)
            raise errors.precondition(
                f"node '{name}' owns vhost{'s' if len(owned) > 1 else ''} "
                f"{', '.join(owned)}: "
                + ("move them first (warrenctl move_vhost VHOST NODE)" if running else
                   "they fail over once an in-sync replica can take over; none can now "
                   "(no unclean promotion): start the node again, or move them first")
                + ", then forget it")
        try:
            await self.metadata.remove_node(node["raft"])
        except ClusterUnavailable as e:
            raise ChannelError(errors.INTERNAL_ERROR, str(e)) from None
        await self.submit({"op": "forget_node", "name": name})

    def cluster_status(self) -> dict:
        st = self.metadata.status()
        partners = st.get("partners", {})
        me = self.settings.node_name
        nodes = []
        for name, node in sorted(self.runtime.nodes.items()):
            raft = node.get("raft")
            nodes.append({
                "name": name, "raft": raft, "amqp": node.get("amqp"),
                "http": node.get("http"), "forward": node.get("forward"),
                "running": name == me or partners.get(raft) == "connected",
                "leader": raft == st.get("leader"),
                "owns": sorted(v for v, d in self.runtime.vhost_defs.items()
                               if d.get("owner") == name),
                "replicates": sorted(v for v, d in self.runtime.vhost_defs.items()
                                     if name in d.get("replicas", [])),
                "shards": [{"vhost": d["vhost"], "shard": d["shard"],
                            "role": "owner" if d.get("owner") == name else "replica"}
                           for _, d in sorted(self.runtime.shard_defs.items())
                           if name == d.get("owner") or name in d.get("replicas", [])]})
        return {"node": me, "leader": st.get("leader"), "term": st.get("term"),
                "joining": [{"raft": a, "reason": why}
                            for a, why in sorted(self.metadata.settle_joining().items())],
                "cluster_id": self.metadata.cluster_id,
                "definitions": self.metadata.digest_status(),
                "commit_index": st.get("commit_index"),
                "last_applied": st.get("last_applied"), "has_quorum": st.get("has_quorum"),
                "raft_state": st.get("state"), "nodes": nodes,
                "vhosts": {v: {"owner": d.get("owner"), "epoch": d.get("epoch"),
                               "replicas": d.get("replicas", []),
                               "in_sync": d.get("in_sync", []),
                               "available": self.availability(v) is None,
                               "shards": [self.shard_status(u) for u in
                                          shards.units_of(v, d)]}
                           for v, d in sorted(self.runtime.vhost_defs.items())}}

    def shard_status(self, unit: str) -> dict:
        d = self.runtime.units.get(unit) or {}
        return {"shard": shards.split(unit)[1], "owner": d.get("owner"),
                "epoch": d.get("epoch"), "replicas": d.get("replicas", []),
                "in_sync": d.get("in_sync", []),
                "available": self.availability(unit) is None}


def unit_text(unit: str) -> str:
    """A unit as a list in a message names it: 'orders', or 'orders' shard 2."""
    vhost, shard = shards.split(unit)
    return repr(vhost) if shard == 0 else f"{vhost!r} shard {shard}"
