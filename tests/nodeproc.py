"""Start and stop real `warren` node processes for the integration and cluster tests."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_handed_out: set[int] = set()


def http_json(base_url: str, method: str, path: str, body: object = None,
              user: str = "guest", password: str = "guest",
              timeout: float = 20) -> tuple[int, Any]:
    """One management API call: (status, decoded JSON, or the text when it is not JSON)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base_url + path, data=data, method=method)
    req.add_header("Authorization",
                   "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw) if raw else None
        except ValueError:
            return e.code, raw.decode(errors="replace")


def free_port() -> int:
    """A port free now, chosen below the kernel's ephemeral range when there is room: a
    port the kernel hands out (bind to 0) may be taken by some outgoing connection before
    the node binds it, and the fault tests make many.  Never the same one twice in one
    process: two nodes of one test would get the same port, both free when chosen."""
    while True:
        port = _candidate()
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _candidate() -> int:
    low, _ = _ephemeral_range()
    if low > 12000:
        for _ in range(50):
            port = random.randrange(10000, low)
            with socket.socket() as s:
                try:
                    s.bind(("0.0.0.0", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None,
              host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"node exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


class NodeProcess:
    """One `warren` process.  By default it listens on loopback; the partition tests give it
    a network namespace (`netns`, entered with `ip netns exec`) and that namespace's address
    (`host`), which it then listens on and advertises to its peers."""

    def __init__(self, data_dir: Path, name: str = "warren@localhost", *,
                 host: str = "127.0.0.1", netns: str | None = None, **settings: str) -> None:
        self.data_dir = Path(data_dir)
        self.name = name
        self.host = host
        self.netns = netns
        self.amqp_port = free_port()
        self.http_port = free_port()
        self.raft_port = free_port()
        self.forward_port = free_port()
        self.settings = settings
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.amqp_port}/%2F"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "WARREN_NODE_NAME": self.name,
            "WARREN_DATA_DIR": str(self.data_dir),
            "WARREN_AMQP_HOST": self.host,
            "WARREN_AMQP_PORT": str(self.amqp_port),
            "WARREN_HTTP_HOST": self.host,
            "WARREN_HTTP_PORT": str(self.http_port),
            "WARREN_RAFT_ADDRESS": f"{self.host}:{self.raft_port}",
            "WARREN_FORWARD_ADDRESS": f"{self.host}:{self.forward_port}",
            "PYTHONPATH": str(REPO),
        })
        for k, v in self.settings.items():
            env["WARREN_" + k.upper()] = str(v)
        return env

    @property
    def raft_address(self) -> str:
        return f"{self.host}:{self.raft_port}"

    def launch(self) -> "NodeProcess":
        """Start the process without waiting (a cluster's nodes must start together)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        cmd = [sys.executable, "-m", "node"]
        if self.netns:
            # `ip netns exec` execs the command: the pid (and so every signal) is the node's
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self.proc = subprocess.Popen(cmd, env=self.env(),
                                     stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        log.close()
        return self

    def wait(self, timeout: float = 30.0) -> "NodeProcess":
        wait_port(self.amqp_port, timeout, self.proc, self.host)
        wait_port(self.http_port, timeout, self.proc, self.host)
        return self

    def start(self, timeout: float = 30.0) -> "NodeProcess":
        return self.launch().wait(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no chance to flush anything."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the process hangs with its sockets open (a long GC, a stalled VM)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.send_signal(signal.SIGCONT)  # a paused node could not act on SIGTERM
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
