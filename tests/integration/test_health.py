"""Health checks of a running node, and `warren healthcheck` (the image's HEALTHCHECK)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

from tests.nodeproc import REPO, NodeProcess


def get(node: NodeProcess, path: str, auth: str) -> tuple[int, dict]:
    req = urllib.request.Request(node.http_url + path, headers={"Authorization": auth})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def healthcheck(node: NodeProcess, *args: str) -> subprocess.CompletedProcess:
    env = {**node.env(), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "node", "healthcheck", *args], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_a_running_node_is_ready(node: NodeProcess):
    basic = "Basic Z3Vlc3Q6Z3Vlc3Q="  # guest:guest
    for check in ("ready-to-serve-clients", "virtual-hosts",
                  f"port-listener/{node.amqp_port}"):
        code, body = get(node, f"/api/health/checks/{check}", basic)
        assert (code, body["status"]) == (200, "ok"), (check, body)
    out = healthcheck(node)
    assert (out.returncode, out.stdout) == (0, "ready-to-serve-clients: ok\n"), out.stderr


def test_the_health_token_opens_the_health_checks_and_nothing_else(node: NodeProcess):
    token = (node.data_dir / ".health-token").read_text().strip()
    assert oct(os.stat(node.data_dir / ".health-token").st_mode & 0o777) == "0o600"
    code, body = get(node, "/api/health/checks/ready-to-serve-clients", f"Bearer {token}")
    assert (code, body["status"]) == (200, "ok")
    code, _ = get(node, "/api/overview", f"Bearer {token}")
    assert code == 401
    code, _ = get(node, "/api/health/checks/ready-to-serve-clients", "Bearer not-the-token")
    assert code == 401


def test_healthcheck_of_a_node_that_is_not_running(tmp_path):
    stopped = NodeProcess(tmp_path / "never-started")
    out = healthcheck(stopped)
    assert out.returncode == 1
    assert out.stdout.startswith("unhealthy: no health token in ")
