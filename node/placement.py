"""Placement: which node runs a vhost (its `owner` in the replicated vhost record), choosing
one for a new vhost, moving one, cluster membership (join, forget) and `cluster_status`.

Placement is a mixin of `Broker`. It reads `settings` (node_name and addresses), `metadata`
(Raft status, membership changes), `nodes` and `vhost_defs` (both kept by the definitions
mirror), and submits changes through `submit` (node/definition_changes.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node import errors
from node.config import Settings
from node.errors import ChannelError

if TYPE_CHECKING:
    from cluster.raft import MetadataStore


class Placement:
    settings: Settings
    metadata: "MetadataStore"
    nodes: dict[str, dict]
    vhost_defs: dict[str, dict]

    if TYPE_CHECKING:
        async def submit(self, command: dict) -> dict: ...

    def node_record(self) -> dict:
        s = self.settings
        host = s.raft_address.rpartition(":")[0]
        return {"name": s.node_name, "raft": self.metadata.self_address,
                "forward": s.forward_address,
                "amqp": f"{host}:{s.amqp_port}", "http": f"{host}:{s.http_port}"}

    def owner_of(self, vhost: str) -> str | None:
        d = self.vhost_defs.get(vhost)
        return d.get("owner") if d else None

    def owns(self, vhost: str) -> bool:
        """A vhost without an owner (a single node's) is served wherever it is opened."""
        owner = self.owner_of(vhost)
        return owner is None or owner == self.settings.node_name

    def pick_owner(self) -> str:
        """The least loaded reachable node (fewest vhosts owned); ties by name."""
        status = self.metadata.status()
        reachable = {self.settings.node_name}
        partners = status.get("partners", {})
        for name, node in self.nodes.items():
            if partners.get(node.get("raft")) == "connected":
                reachable.add(name)
        load = {n: 0 for n in reachable}
        for d in self.vhost_defs.values():
            if d.get("owner") in load:
                load[d["owner"]] += 1
        return min(sorted(load), key=lambda n: load[n])

    async def set_vhost_owner(self, name: str, owner: str) -> None:
        if owner not in self.nodes:
            raise ChannelError(errors.NOT_FOUND, f"no node '{owner}' in the cluster")
        await self.submit({"op": "set_vhost_owner", "name": name, "owner": owner})

    async def join_node(self, raft_address: str) -> None:
        from cluster.raft import ClusterUnavailable
        try:
            await self.metadata.add_node(raft_address)
        except ClusterUnavailable as e:
            raise ChannelError(errors.INTERNAL_ERROR, str(e)) from None

    async def forget_node(self, name: str) -> None:
        from cluster.raft import ClusterUnavailable
        node = self.nodes.get(name)
        if node is None:
            raise ChannelError(errors.NOT_FOUND, f"no node '{name}' in the cluster")
        if name == self.settings.node_name:
            raise errors.precondition("a node cannot forget itself; run this on another node")
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
        for name, node in sorted(self.nodes.items()):
            raft = node.get("raft")
            nodes.append({
                "name": name, "raft": raft, "amqp": node.get("amqp"),
                "http": node.get("http"), "forward": node.get("forward"),
                "running": name == me or partners.get(raft) == "connected",
                "leader": raft == st.get("leader"),
                "owns": sorted(v for v, d in self.vhost_defs.items()
                               if d.get("owner") == name)})
        return {"node": me, "leader": st.get("leader"), "term": st.get("term"),
                "commit_index": st.get("commit_index"),
                "last_applied": st.get("last_applied"), "has_quorum": st.get("has_quorum"),
                "raft_state": st.get("state"), "nodes": nodes,
                "vhosts": {v: {"owner": d.get("owner"), "epoch": d.get("epoch")}
                           for v, d in sorted(self.vhost_defs.items())}}
