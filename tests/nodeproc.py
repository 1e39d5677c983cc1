"""Start and stop real `warren` node processes for the integration and cluster tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"node exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


class NodeProcess:
    def __init__(self, data_dir: Path, name: str = "warren@localhost", **settings: str) -> None:
        self.data_dir = Path(data_dir)
        self.name = name
        self.amqp_port = free_port()
        self.http_port = free_port()
        self.raft_port = free_port()
        self.forward_port = free_port()
        self.settings = settings
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "WARREN_NODE_NAME": self.name,
            "WARREN_DATA_DIR": str(self.data_dir),
            "WARREN_AMQP_HOST": "127.0.0.1",
            "WARREN_AMQP_PORT": str(self.amqp_port),
            "WARREN_HTTP_HOST": "127.0.0.1",
            "WARREN_HTTP_PORT": str(self.http_port),
            "WARREN_RAFT_ADDRESS": f"127.0.0.1:{self.raft_port}",
            "WARREN_FORWARD_ADDRESS": f"127.0.0.1:{self.forward_port}",
            "PYTHONPATH": str(REPO),
        })
        for k, v in self.settings.items():
            env["WARREN_" + k.upper()] = str(v)
        return env

    @property
    def raft_address(self) -> str:
        return f"127.0.0.1:{self.raft_port}"

    def launch(self) -> "NodeProcess":
        """Start the process without waiting (a cluster's nodes must start together)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "node"], env=self.env(),
                                     stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        log.close()
        return self

    def wait(self, timeout: float = 30.0) -> "NodeProcess":
        wait_port(self.amqp_port, timeout, self.proc)
        wait_port(self.http_port, timeout, self.proc)
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

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
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
