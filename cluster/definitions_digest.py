"""Divergence checks of the replicated definitions: every node compares a digest of its
`DefinitionState` with the Raft leader's, taken at the same point of the log.

Raft keeps the logs equal, and equal logs applied in order give equal states; but a node
whose log was once written outside the cluster (started alone on a member's data) has
applied entries the others never had, and nothing in Raft notices: the logs agree from
then on and the states never will (seen: two owners of one vhost, both confirming).  So:

1. the leader commits ``digest_mark`` (an id): every node, applying it, records the digest
   of its state at that very point of the log;
2. the leader then commits ``digest_check`` (the id and the leader's own digest at the
   mark): every node compares it with the digest it recorded.

Neither changes the state (applying them stays deterministic); a mismatch is logged, fails
the node's ready-to-serve-clients health check and shows in the metrics and
cluster_status, until a later check agrees (the node loaded the leader's dump).  The leader
checks after it was elected and then at most every `INTERVAL` seconds while definitions
change; an idle cluster's log does not grow.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from typing import Any

import msgpack

from cluster.definitions import DefinitionState

logger = logging.getLogger("cluster.digest")

INTERVAL = 5.0
OPS = ("digest_mark", "digest_check")
_KEEP_MARKS = 32


def _sorted_items(value: Any, depth: int) -> Any:
    # the tables' dicts (vhost -> name -> record) as key-sorted pairs: the digest must not
    # depend on their insertion order; a record's own fields are packed as they stand
    # (every node builds a record with the same code, so in the same order)
    if depth == 0 or not isinstance(value, dict):
        return value
    return [(k, _sorted_items(value[k], depth - 1)) for k in sorted(value, key=repr)]


def state_digest(state: DefinitionState) -> str:
    """A digest of the whole definitions state, the same on every node holding it (about
    30 ms for 10k queues and 10k bindings: checks are rare)."""
    h = hashlib.sha256()
    pack = msgpack.Packer(use_bin_type=True)
    for table, value in sorted(state._tables().items()):
        h.update(pack.pack(table))
        # vhosts, users, nodes: name -> record; the rest: vhost -> name -> record
        depth = 1 if table in ("vhosts", "users", "nodes") else 2
        h.update(pack.pack(_sorted_items(value, depth)))
    return h.hexdigest()[:32]


class DigestChecks:
    """One node's marks and check results; fed on pysyncobj's tick thread under the
    replica's lock, read from the loop (plain attribute reads)."""

    def __init__(self) -> None:
        self._marks: OrderedDict[str, str] = OrderedDict()
        self.checks = 0  # checks compared here
        self.agreed = 0
        self.diverged: dict[str, Any] | None = None  # the last disagreeing check

    def mark(self, mark_id: str, state: DefinitionState) -> str:
        digest = state_digest(state)
        self._marks[mark_id] = digest
        while len(self._marks) > _KEEP_MARKS:
            self._marks.popitem(last=False)
        return digest

    def digest_at(self, mark_id: str) -> str | None:
        return self._marks.get(mark_id)

    def check(self, mark_id: str, digest: str, by: str) -> None:
        ours = self._marks.get(mark_id)
        if ours is None:  # marked before a dump was loaded here: nothing to compare
            return
        self.checks += 1
        if ours == digest:
            self.agreed += 1
            if self.diverged is not None:
                logger.warning("definitions agree with the Raft leader %s again (check %s)",
                               by, mark_id)
            self.diverged = None
            return
        first = self.diverged is None
        self.diverged = {"mark": mark_id, "leader": by, "leader_digest": digest,
                         "digest": ours}
        if first:
            logger.error(
                "definitions diverged from the Raft leader %s: at the same log position "
                "(check %s) this node's digest is %s, the leader's %s. One of the two "
                "applied entries the other never had (a log written outside the cluster); "
                "do not trust this node's view of owners and epochs: stop the diverged "
                "node, move its data directory away and let it rejoin as a new node",
                by, mark_id, ours, digest)

    def describe(self) -> dict[str, Any]:
        return {"checks": self.checks, "agreed": self.agreed, "diverged": self.diverged}
