"""Health that means something: a node that has lost its Raft leader is not ready to serve
clients, says why, and `warren healthcheck` (the container's check) fails with it."""

from __future__ import annotations

import subprocess
import sys

from tests.cluster.conftest import Cluster
from tests.nodeproc import REPO


def test_a_node_without_a_raft_leader_is_not_ready(tmp_path):
    c = Cluster(tmp_path).start()
    try:
        survivor, *others = c.nodes
        assert c.http(survivor, "GET", "/api/health/checks/ready-to-serve-clients")[0] == 200
        for n in others:
            n.kill()

        def not_ready() -> bool:
            code, body = c.http(survivor, "GET", "/api/health/checks/ready-to-serve-clients")
            return code == 503 and "Raft leader" in body["reason"]

        c.wait_until(not_ready, timeout=60, what="the survivor to report no Raft leader")
        out = subprocess.run([sys.executable, "-m", "node", "healthcheck"],
                             env={**survivor.env(), "PYTHONPATH": str(REPO)}, cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1
        assert out.stdout.startswith("unhealthy: ") and "Raft leader" in out.stdout, out.stdout
        # the vhosts it owns are still open: that check alone stays green
        assert c.http(survivor, "GET", "/api/health/checks/virtual-hosts")[0] == 200
    finally:
        c.stop()
