"""What "healthy" means for a node, shared by /api/health/checks/* and `warren healthcheck`
(the container's HEALTHCHECK): its listeners are serving, it is a Raft member that knows
its leader, and the vhosts it owns have their message stores open.

The container's check runs inside the container without a user's password (which an
operator may change at any time).  As rabbitmq-diagnostics reads the Erlang cookie from
the node's home, it reads a random token that the node writes into its data directory,
readable by the node's own user only; the token opens the health checks and nothing else.
"""

from __future__ import annotations

import hmac
import os
import secrets
from typing import Any

from cluster import shards

TOKEN_FILE = ".health-token"


def write_token(data_dir: str) -> str:
    token = secrets.token_urlsafe(24)
    path = os.path.join(data_dir, TOKEN_FILE)
    tmp = f"{path}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    os.replace(tmp, path)
    return token


def read_token(data_dir: str) -> str:
    with open(os.path.join(data_dir, TOKEN_FILE), encoding="ascii") as f:
        return f.read().strip()


def token_matches(expected: str | None, header: str) -> bool:
    if not expected or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), expected.encode())


def listener_problems(listeners: dict[str, Any]) -> list[str]:
    """Listeners registered by `warren` (name -> asyncio server) that stopped serving."""
    out = []
    for what, server in listeners.items():
        if server is None:
            continue
        if not server.is_serving() or not server.sockets:
            out.append(f"{what} listener is not accepting connections")
    return out


def raft_problem(broker: Any) -> str | None:
    status = broker.metadata.status()
    if not status.get("started"):
        return "Raft is not running on this node"
    leader = status.get("leader")
    if leader is None:
        return "this node knows no Raft leader"
    # pysyncobj's follower cut off from everyone keeps naming its last leader (it starts
    # no election while connected to nobody): a leader counts only if it is reachable
    if leader != status.get("self") and status.get("partners", {}).get(leader) != "connected":
        return f"the Raft leader {leader} cannot be reached from this node"
    if not status.get("has_quorum"):
        return "this node reaches less than a majority of the Raft members"
    return None


def vhost_problems(broker: Any) -> list[str]:
    """Vhosts this node owns whose store is not open for writes."""
    out = []
    for unit in sorted(broker.runtime.units):
        if not broker.runtime.owns(unit):
            continue
        name = shards.split(unit)[0]
        vh = broker.runtime.vhosts.get(name)
        if vh is None:
            out.append(f"vhost '{name}' is not running")
            continue
        store = vh.unit_stores.get(unit)
        problem = "no message store" if store is None else store.problem()
        if problem:
            out.append(f"{shards.label(unit)}: {problem}")
    return out


def definitions_problem(broker: Any) -> str | None:
    """The last divergence check disagreed with the Raft leader (cluster/digest.py)."""
    diverged = broker.metadata.digest_status().get("diverged")
    if not diverged:
        return None
    return (f"this node's definitions diverged from the Raft leader {diverged['leader']} "
            f"(digest check {diverged['mark']}): its owners and epochs cannot be trusted")


def readiness_problems(broker: Any, listeners: dict[str, Any]) -> list[str]:
    out = listener_problems(listeners)
    raft = raft_problem(broker)
    if raft:
        out.append(raft)
    definitions = definitions_problem(broker)
    if definitions:
        out.append(definitions)
    return out + vhost_problems(broker)
