"""The cluster a data directory belongs to, recorded in the directory itself.

A node's Raft log and message stores are part of one cluster's history.  Started alone on
them (an env file left out: no peers, no secret) it would form a cluster of one, name
itself owner of vhosts that were failed over elsewhere and commit Raft entries nobody else
has; started again with its settings it could win an election with that log, and the
cluster splits for good.  So, as RabbitMQ keeps a node's cluster membership in its data
directory (a node reset is the only way out of a cluster):

* `cluster.json` records the cluster's id (agreed through Raft: the first bootstrap
  command's) and the Raft members this node was last started with.  A node whose record
  names other members refuses to start without peers (`refusal`): one line, EX_CONFIG.
* Every Raft message carries the sender's cluster id (`cluster.raft_port`); a node drops
  messages tagged with another id, so a member whose log was written outside the cluster
  (a cluster of one, or a fork) can neither vote nor lead when it comes back.
* A node that started alone without a record on data that names other members (a record
  deleted, a data directory from an older release) has committed outside the cluster by
  then: it commits a new, forked cluster id into its own log (so that its peers refuse it
  even if the record goes too), records it (`fork`) and stops; a forked directory never
  starts again.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass

from cluster.journal import fsync_dir

RECORD_FILE = "cluster.json"


@dataclass
class Membership:
    cluster_id: str
    members: list[str]  # Raft addresses this node was last started with, its own included
    forked: bool = False  # its Raft log was written outside the cluster it belonged to
    forked_from: str = ""

    @property
    def clustered(self) -> bool:
        return len(self.members) > 1


def new_cluster_id() -> str:
    return uuid.uuid4().hex


def path_of(data_dir: str) -> str:
    return os.path.join(data_dir, RECORD_FILE)


def read(data_dir: str) -> Membership | None:
    """The record, or None when the directory has none.  A record that cannot be read is
    an error (ValueError): guessing would defeat its purpose."""
    path = path_of(data_dir)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cluster_id"), str) \
            or not isinstance(data.get("members"), list):
        raise ValueError(f"{path} is not a WarrenMQ cluster record")
    return Membership(data["cluster_id"], [str(m) for m in data["members"]],
                      bool(data.get("forked", False)), str(data.get("forked_from", "")))


def write(data_dir: str, record: Membership) -> None:
    path = path_of(data_dir)
    body: dict[str, object] = {"cluster_id": record.cluster_id,
                               "members": sorted(record.members)}
    if record.forked:
        body.update(forked=True, forked_from=record.forked_from)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(body, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path)


def refusal(record: Membership | None, data_dir: str, peers: list[str]) -> str | None:
    """Why a node must not start on this directory with these peers (None: it may)."""
    if record is not None and record.forked:
        return (f"the data directory {os.path.abspath(data_dir)} was used outside its "
                f"cluster {record.forked_from or '(unnamed)'} (its Raft log has entries "
                "the cluster never had): move it away and join this node as a new member")
    if record is None or not record.clustered or peers:
        return None
    return (f"the data directory {os.path.abspath(data_dir)} belongs to cluster "
            f"{record.cluster_id} (Raft members {', '.join(sorted(record.members))}) but this "
            "node is started without peers: start it with the cluster's WARREN_PEERS and "
            "WARREN_CLUSTER_SECRET (an env file left out?), or move the directory away to "
            "start a new node")


def foreign_members(self_address: str, registered: dict[str, dict]) -> list[str]:
    """Members registered in the definitions other than this node (by Raft address)."""
    return sorted(str(n.get("raft")) for n in registered.values()
                  if n.get("raft") and n.get("raft") != self_address)


def fork(data_dir: str, cluster_id: str, forked_id: str) -> Membership:
    """Record that this directory's Raft log left cluster ``cluster_id``."""
    record = Membership(forked_id, [], forked=True, forked_from=cluster_id)
    write(data_dir, record)
    return record
