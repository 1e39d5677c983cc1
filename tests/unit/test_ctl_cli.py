"""warrenctl as a shell command: --help lists every command on one line each, and a
reader that leaves early (`warrenctl ... | head`) ends it quietly."""

from __future__ import annotations

import os
import subprocess
import sys

from node.ctl import HELP, LISTS, SIMPLE
from tests.nodeproc import REPO


def ctl(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "node.ctl", *args], env=env, cwd=REPO,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60)


def test_help_lists_every_command_on_one_line():
    assert set(HELP) == set(LISTS) | set(SIMPLE) | {"status"}
    out = ctl("--help")
    assert out.returncode == 0
    listed = out.stdout.split("commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listed] == sorted(HELP)
    for line in listed:
        assert len(line) <= 100, line


def test_a_reader_that_leaves_early_ends_it_quietly():
    read, write = os.pipe()
    os.close(read)  # `head` has already gone: the first write fails with EPIPE
    try:
        out = ctl("--help", stdout=write)
    finally:
        os.close(write)
    assert out.returncode == 0
    assert out.stderr == ""


def test_unknown_command_is_named():
    out = ctl("--node", "http://127.0.0.1:9", "list_queus")
    assert out.returncode == 2
    assert out.stderr.startswith("Error: unknown command 'list_queus'; commands: ")


def test_a_node_that_never_answers_is_one_line_not_a_traceback():
    import socket
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()  # accepts (in the kernel's backlog) and never answers
        url = "http://127.0.0.1:%d" % server.getsockname()[1]
        out = ctl("--node", url, "--timeout", "1", "list_vhosts")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"Error: GET /api/vhosts: no answer from {url} within 1 s (the node may still be "
        "working on it)"]
