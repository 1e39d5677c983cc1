"""The README's walkthrough, run as written against three local nodes.

Every ``$ command`` of the README's walkthrough section runs in order; what the README
shows after it must be what the command prints (whitespace aside, ``…`` matching anything).
The README's ports (5672/15672/25672/25673 for n1, 56x2 for n2, 56x2 for n3) become the
test cluster's free ports.  ``kill -9 %N`` kills node N; ``warren --node-name nN@…``
starts node N again.  A command whose output does not match yet is run again for a while,
as an operator would while a cluster settles.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

from tests.cluster.conftest import Cluster
from tests.nodeproc import REPO, NodeProcess

README = REPO / "README.md"
SECTION = "## Walkthrough"
# the README's cluster of three: (amqp, http, raft, forward) per node
README_PORTS = [(5672, 15672, 25672, 25673), (5682, 15682, 26672, 26673),
                (5692, 15692, 27672, 27673)]
SETTLE = 90.0  # seconds a command may take to show what the README shows


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)


def walkthrough_steps(text: str) -> list[Step]:
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    steps: list[Step] = []
    for block in re.findall(r"```console\n(.*?)```", section, re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append(Step(line[2:]))
            else:
                steps[-1].expected.append(line)
    return steps


def normalize(line: str) -> str:
    return " ".join(line.split())


def line_pattern(expected: str) -> re.Pattern[str]:
    # "…" is anything, also nothing: "true …" matches "true" (an empty column) too
    parts = normalize(expected).split("…")
    regex = ""
    for i, part in enumerate(parts):
        if i < len(parts) - 1 and part.endswith(" "):
            regex += re.escape(part[:-1]) + "(?: .*)?"
        else:
            regex += re.escape(part) + (".*" if i < len(parts) - 1 else "")
    return re.compile(regex + r"\Z")


def matches(expected: list[str], actual: str) -> bool:
    lines = actual.rstrip("\n").splitlines() if actual.strip() else []
    if len(lines) != len(expected):
        return False
    return all(line_pattern(e).match(normalize(a)) for e, a in zip(expected, lines, strict=True))


class Walkthrough:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.ports: dict[int, int] = {}
        for node, readme in zip(cluster.nodes, README_PORTS, strict=True):
            real = (node.amqp_port, node.http_port, node.raft_port, node.forward_port)
            self.ports.update(dict(zip(readme, real, strict=True)))
        self.env = {**os.environ, "PYTHONPATH": str(REPO),
                    "WARREN_HTTP_URL": cluster.nodes[0].http_url}
        for key in ("WARREN_CTL_USER", "WARREN_CTL_PASSWORD", "WARREN_DEFAULT_USER",
                    "WARREN_DEFAULT_PASS"):
            self.env.pop(key, None)

    def localize(self, text: str) -> str:
        """The README's ports -> this cluster's (whole numbers only: 5672 is in 15672)."""
        return re.sub(r"(?<!\d)(\d{4,5})(?!\d)",
                      lambda m: str(self.ports.get(int(m.group(1)), m.group(1))), text)

    def node(self, number: str) -> NodeProcess:
        return self.cluster.nodes[int(number) - 1]

    def run(self, step: Step) -> None:
        command = self.localize(step.command)
        expected = [self.localize(line) for line in step.expected]
        kill = re.fullmatch(r"kill -9 %(\d)", command)
        if kill:
            self.node(kill.group(1)).kill()
            return
        start = re.match(r"warren --node-name n(\d)@localhost ", command)
        if start:
            node = self.node(start.group(1))
            node.launch()
            node.wait(60)
            return
        argv = shlex.split(command)
        if argv[0] == "warrenctl":
            argv = [sys.executable, "-m", "node.ctl", *argv[1:]]
        elif argv[:2] == ["warren", "perf"]:
            argv = [sys.executable, "-m", "node", *argv[1:]]
        else:
            raise AssertionError(f"the walkthrough test cannot run {step.command!r}")
        deadline = time.monotonic() + SETTLE
        while True:
            proc = subprocess.run(argv, env=self.env, cwd=REPO, capture_output=True,
                                  text=True, timeout=120)
            actual = proc.stdout + proc.stderr
            if matches(expected, actual):
                return
            missing = "HTTP 405" in actual or "unknown command" in actual
            if missing or time.monotonic() > deadline:
                raise AssertionError(
                    f"README walkthrough step\n  $ {step.command}\nshows\n"
                    + "\n".join(f"  {e}" for e in expected)
                    + "\nbut it printed\n" + "\n".join(f"  {a}" for a in actual.splitlines())
                    + ("\n(the API this step needs is not on this branch)" if missing else ""))
            time.sleep(0.5)


def test_readme_walkthrough_steps_are_found():
    steps = walkthrough_steps(README.read_text())
    commands = [s.command.split()[0] for s in steps]
    assert commands.count("warrenctl") >= 8 and "kill" in commands
    assert any(s.command.startswith("warrenctl move_vhost") for s in steps)


def test_readme_walkthrough(tmp_path):
    cluster = Cluster(tmp_path).start()
    try:
        walk = Walkthrough(cluster)
        for step in walkthrough_steps(README.read_text()):
            walk.run(step)
    finally:
        cluster.stop()
