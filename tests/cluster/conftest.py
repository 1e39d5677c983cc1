"""Real three-process clusters on loopback."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.nodeproc import NodeProcess, http_json

SECRET = "test-cluster-secret"


class Cluster:
    """`settings` go to every node (e.g. replication_factor="3"); `placement(i)` gives node
    i's host and network namespace (the partition tests' NetnsLab.placement)."""

    def __init__(self, base: Path, size: int = 3,
                 placement: Callable[[int], dict] | None = None, **settings: str) -> None:
        self.base = base
        self.disk_alarms_expected = "disk_free_limit" in settings  # a test that fills it
        self.user = settings.get("default_user", "guest")
        self.password = settings.get("default_pass", "guest")
        self.nodes = [NodeProcess(base / f"n{i + 1}", name=f"n{i + 1}@localhost",
                                  **(placement(i) if placement else {}),
                                  **{"cluster_secret": SECRET, "log_level": "info", **settings})
                      for i in range(size)]
        peers = ",".join(n.raft_address for n in self.nodes)
        for n in self.nodes:
            n.settings["peers"] = peers

    def start(self) -> "Cluster":
        for n in self.nodes:
            n.launch()
        for n in self.nodes:
            n.wait(60)
        self.wait_until(lambda: len(self.status(self.nodes[0])["nodes"]) == len(self.nodes))
        return self

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
        # A disk alarm blocks every publisher of the node, and on this machine's free disk
        # none is due: one once came from a store whose directory a cleanup had removed
        # (it hung a pika client on its next call).  Checked when no failure is already on
        # its way out (this runs in `finally` blocks too).
        if not self.disk_alarms_expected and sys.exc_info()[1] is None:
            alarms = [f"{n.name}: {line}" for n in self.nodes
                      for line in n.log_text().splitlines()
                      if "disk resource limit alarm set" in line]
            assert not alarms, "unexpected disk alarms:\n" + "\n".join(alarms)

    def by_name(self, name: str) -> NodeProcess:
        return next(n for n in self.nodes if n.name == name)

    def http(self, node: NodeProcess, method: str, path: str, body: object = None,
             timeout: float = 20) -> tuple[int, object]:
        return http_json(node.http_url, method, path, body, self.user, self.password,
                         timeout)

    def status(self, node: NodeProcess) -> dict:
        code, st = self.http(node, "GET", "/api/cluster-status")
        assert code == 200, st
        return st  # type: ignore[return-value]

    def owner_of(self, vhost: str, via: NodeProcess | None = None) -> NodeProcess:
        st = self.status(via or self.nodes[0])
        return self.by_name(st["vhosts"][vhost]["owner"])

    def leader(self, via: NodeProcess) -> NodeProcess | None:
        st = self.status(via)
        for n in st["nodes"]:
            if n["leader"]:
                return self.by_name(n["name"])
        return None

    @staticmethod
    def wait_until(cond, timeout: float = 20.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if cond():
                    return
            except Exception as e:  # a node may be restarting
                last = e
            time.sleep(0.1)
        raise TimeoutError(f"{what} not reached in {timeout}s (last error: {last})")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = Cluster(tmp_path_factory.mktemp("cluster")).start()
    yield c
    c.stop()


@pytest.fixture
def netns_lab():
    """Three network namespaces on a bridge (tests.cluster.netns).  Where they cannot be made
    (not root, no `ip` or `iptables`) the test fails with the reason: a partition test that
    skips would pass CI without testing anything (.ci/run installs iproute2 and iptables)."""
    from tests.cluster import netns
    reason = netns.unavailable_reason()
    if reason:
        pytest.fail(f"partition tests cannot run here: {reason}", pytrace=False)
    lab = netns.NetnsLab(3)
    try:
        lab.setup()
        yield lab
    finally:
        lab.teardown()


def netns_cluster(lab, base: Path, **settings: str):
    """A started cluster whose node i lives in the lab's namespace i; a context manager
    that heals every cut before stopping the nodes."""
    import contextlib

    @contextlib.contextmanager
    def managed():
        c = Cluster(base, placement=lab.placement, **lab.settings, **settings)
        try:
            c.start()
            yield c
        finally:
            lab.heal()  # nodes stopped while cut off leave orphan sockets behind
            c.stop()
    return managed()


@pytest.fixture(autouse=True)
def _no_stray_clients():
    """A fault test that fails halfway must not leave its publishers running into the next
    test's cluster."""
    yield
    from tests.cluster import harness
    harness.stop_all()
