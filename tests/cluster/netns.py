"""Network partitions for cluster tests: one Linux network namespace per node.

Each node runs in its own namespace (`ip netns exec`), with a veth pair into a bridge in
the root namespace, on a /24 of its own (10.77.X.0/24: the bridge is .1, node i is .i+2).
Nodes reach each other through the bridge; the test process (root namespace) reaches every
node from the bridge address, as clients do.  Cutting a node off installs iptables DROP
rules *inside its namespace* for the other nodes' addresses only, so its clients keep
reaching it while its peers (Raft, forwarding, replication) see silence, as in a real
partition; healing flushes those rules.

Everything a lab creates carries a random token in its name (parallel runs do not collide),
is removed by `teardown()` (the fixture's finalizer), and is also swept by the next lab if
the process that made it died without cleaning up (a marker file records its pid).
Needs root, `ip` and `iptables`; `unavailable_reason()` says why not otherwise."""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

log = logging.getLogger("tests.netns")

MARKERS = Path("/tmp/warren-netns")
CHAIN = "WARREN-CUT"
# guest may only log in over loopback, and clients of namespaced nodes come from the bridge
USER = "tester"
PASSWORD = "tester-secret"


class NetnsError(RuntimeError):
    pass


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def unavailable_reason() -> str | None:
    """Why partition tests cannot run on this machine, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = f"warren-probe-{secrets.token_hex(3)}"
    r = _run("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    try:
        r = _run("ip", "netns", "exec", probe, "iptables", "-S", check=False)
        if r.returncode != 0:
            return f"iptables does not work inside a namespace: {r.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


def _used_subnets() -> set[str]:
    out = _run("ip", "-4", "-o", "addr", "show").stdout
    used = set()
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            net = ipaddress.ip_interface(parts[parts.index("inet") + 1]).network
            used.add(str(net))
    return used


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class NetnsLab:
    """A bridge and `size` namespaces; `placement(i)` is what Cluster gives node i."""

    def __init__(self, size: int = 3) -> None:
        self.size = size
        self.token = secrets.token_hex(3)
        self.bridge = f"wqb{self.token}"
        self.namespaces = [f"warren-{self.token}-n{i + 1}" for i in range(size)]
        self.subnet = ""
        self.ips: list[str] = []
        self.gateway = ""
        self.cut_off: dict[int, list[int]] = {}

    # ---------------------------------------------------------------- life cycle

    def setup(self) -> "NetnsLab":
        sweep_stale()
        MARKERS.mkdir(exist_ok=True)
        (MARKERS / self.token).write_text(str(os.getpid()))
        used = _used_subnets()
        free = [x for x in range(1, 255) if f"10.77.{x}.0/24" not in used]
        if not free:
            raise NetnsError("no free 10.77.X.0/24 subnet")
        x = random.choice(free)
        self.subnet = f"10.77.{x}.0/24"
        self.gateway = f"10.77.{x}.1"
        self.ips = [f"10.77.{x}.{i + 2}" for i in range(self.size)]
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i, ns in enumerate(self.namespaces):
            host_end, ns_end = f"wqh{self.token}{i}", f"wqn{self.token}{i}"
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
            _run("ip", "link", "set", host_end, "master", self.bridge)
            _run("ip", "link", "set", host_end, "up")
            _run("ip", "link", "set", ns_end, "netns", ns)
            _run("ip", "-n", ns, "addr", "add", f"{self.ips[i]}/24", "dev", ns_end)
            _run("ip", "-n", ns, "link", "set", ns_end, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            # every cut lives in one chain: healing is one flush
            self._iptables(i, "-N", CHAIN)
            self._iptables(i, "-I", "INPUT", "-j", CHAIN)
            self._iptables(i, "-I", "OUTPUT", "-j", CHAIN)
        log.info("netns lab %s: bridge %s on %s, nodes %s", self.token, self.bridge,
                 self.subnet, self.ips)
        return self

    def teardown(self) -> None:
        """Idempotent; never raises (it runs in finalizers after failures)."""
        _teardown_token(self.token, self.namespaces, self.bridge)

    # ---------------------------------------------------------------- what nodes get

    def placement(self, i: int) -> dict:
        return {"host": self.ips[i], "netns": self.namespaces[i]}

    settings = {"default_user": USER, "default_pass": PASSWORD}

    # ---------------------------------------------------------------- faults

    def _iptables(self, i: int, *args: str) -> None:
        _run("ip", "netns", "exec", self.namespaces[i], "iptables", "-w", *args)

    def cut(self, i: int, others: list[int] | None = None) -> None:
        """Drop everything between node i and the other nodes (by default all of them);
        traffic between node i and the bridge address (the test's clients) still flows."""
        others = [j for j in range(self.size) if j != i] if others is None else others
        for j in others:
            self._iptables(i, "-A", CHAIN, "-s", self.ips[j], "-j", "DROP")
            self._iptables(i, "-A", CHAIN, "-d", self.ips[j], "-j", "DROP")
        self.cut_off[i] = others
        log.info("netns lab %s: node %d (%s) cut off from %s", self.token, i, self.ips[i],
                 [self.ips[j] for j in others])

    def cut_one_way(self, i: int, direction: str) -> None:
        """An asymmetric partition: node i hears nothing from the other nodes ("in") or
        nothing it sends reaches them ("out"); its clients still reach it."""
        others = [j for j in range(self.size) if j != i]
        flag = {"in": "-s", "out": "-d"}[direction]
        for j in others:
            self._iptables(i, "-A", CHAIN, flag, self.ips[j], "-j", "DROP")
        self.cut_off[i] = others
        log.info("netns lab %s: node %d (%s) cut off one way (%s)", self.token, i,
                 self.ips[i], direction)

    def heal(self, i: int | None = None) -> None:
        for k in ([i] if i is not None else list(self.cut_off)):
            self._iptables(k, "-F", CHAIN)
            self.cut_off.pop(k, None)
            log.info("netns lab %s: node %d healed", self.token, k)


def _teardown_token(token: str, namespaces: list[str], bridge: str) -> None:
    for ns in namespaces:
        # heal first: a socket whose FIN or data is dropped lingers as an orphan and keeps
        # its namespace (and veth) alive for minutes after the namespace is deleted
        _run("ip", "netns", "exec", ns, "iptables", "-w", "-F", CHAIN, check=False)
        pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:  # only our nodes run in our namespaces
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    for i, ns in enumerate(namespaces):
        # deleting the host end removes the pair even if the namespace outlives us
        _run("ip", "link", "del", f"wqh{token}{i}", check=False)
        _run("ip", "netns", "del", ns, check=False)
    _run("ip", "link", "del", bridge, check=False)
    try:
        (MARKERS / token).unlink()
    except FileNotFoundError:
        pass


def sweep_stale() -> None:
    """Remove what labs of dead test processes left behind."""
    if not MARKERS.is_dir():
        return
    existing = _run("ip", "netns", "list", check=False).stdout.split("\n")
    for marker in MARKERS.iterdir():
        try:
            pid = int(marker.read_text().strip() or 0)
        except (OSError, ValueError):
            continue
        if pid and _pid_alive(pid):
            continue
        token = marker.name
        namespaces = [line.split()[0] for line in existing
                      if line.startswith(f"warren-{token}-")]
        log.warning("sweeping netns lab %s left by dead pid %d", token, pid)
        _teardown_token(token, namespaces, f"wqb{token}")
