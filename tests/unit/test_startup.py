"""How `warren` fails to start: one line on stderr, an exit code from sysexits(3), no
traceback (node/startup.py).  Each case runs the real entry point, which gives up before
it starts anything."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from node.config import load_settings
from node.startup import EX_CANTCREAT, StartupError, check_data_dir
from tests.nodeproc import REPO, free_port


def warren(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WARREN_")}
    environment.update(env or {})
    environment["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-m", "node", *args], env=environment, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout == ""
    return proc.returncode, proc.stderr.splitlines()


def ports(tmp_path: Path) -> list[str]:
    return ["--data-dir", str(tmp_path / "data"), "--amqp-port", str(free_port()),
            "--http-port", str(free_port()), "--raft-address", f"127.0.0.1:{free_port()}"]


def test_unknown_flag():
    code, lines = warren("--amqp-prot", "5672")
    assert code == 64
    assert lines == ["warren: unrecognized arguments: --amqp-prot 5672 "
                     "(warren --help lists every setting)"]


def test_value_that_is_not_a_number():
    code, lines = warren("--amqp-port", "five")
    assert code == 64
    assert lines == ["warren: amqp_port: expected a number, got 'five' "
                     "(warren --help lists every setting)"]


def test_peers_without_a_secret():
    code, lines = warren(env={"WARREN_PEERS": "127.0.0.1:25672,127.0.0.1:26672"})
    assert code == 64
    assert len(lines) == 1 and "needs --cluster-secret" in lines[0]


def test_unreadable_secret_file(tmp_path):
    code, lines = warren(env={"WARREN_CLUSTER_SECRET_FILE": str(tmp_path / "nope")})
    assert code == 64
    assert lines == [f"warren: WARREN_CLUSTER_SECRET_FILE: cannot read {tmp_path / 'nope'}: "
                     "No such file or directory (warren --help lists every setting)"]


@pytest.mark.parametrize("what", ["AMQP", "HTTP", "Raft"])
def test_port_in_use(tmp_path, what):
    args = ports(tmp_path)
    flag = {"AMQP": "--amqp-port", "HTTP": "--http-port", "Raft": "--raft-address"}[what]
    value = args[args.index(flag) + 1]
    port = int(value.rpartition(":")[2])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        code, lines = warren(*args, "--amqp-host", "127.0.0.1", "--http-host", "127.0.0.1")
    assert code == 69
    assert lines == [f"warren: cannot listen for {what} on 127.0.0.1:{port}: "
                     "address already in use (is another node running?)"]


def test_address_not_on_this_host(tmp_path):
    # TEST-NET-1 (RFC 5737): never an address of this machine
    code, lines = warren(*ports(tmp_path), "--amqp-host", "192.0.2.1")
    assert code == 69
    assert len(lines) == 1 and lines[0].startswith("warren: cannot listen for AMQP on 192.0.2.1:")
    assert lines[0].endswith("not an address of this host")


def test_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "data").write_text("not a directory")
    code, lines = warren(*ports(tmp_path))
    assert code == 73
    assert len(lines) == 1 and lines[0].startswith(
        f"warren: cannot use the data directory {tmp_path / 'data'}: ")


def test_data_dir_with_a_file_this_user_cannot_read(tmp_path, monkeypatch):
    """Root reads everything, so the permission check itself is run in-process here."""
    (tmp_path / "raft").mkdir()
    (tmp_path / "raft" / "journal").write_bytes(b"")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: not str(p).endswith("journal")
                        and real_access(p, m))
    with pytest.raises(StartupError) as e:
        check_data_dir(str(tmp_path))
    assert e.value.code == EX_CANTCREAT
    assert str(e.value) == (f"cannot use the data directory {tmp_path}: "
                            f"{tmp_path / 'raft' / 'journal'}: Permission denied "
                            f"(uid {os.getuid()} must be able to read and write it)")


def test_unreadable_definitions_dump(tmp_path):
    args = ports(tmp_path)
    raft = tmp_path / "data" / "raft"
    raft.mkdir(parents=True)
    (raft / "dump").write_bytes(b"\x00 not a WarrenMQ definitions dump")
    code, lines = warren(*args)
    assert code == 65
    assert len(lines) == 1
    assert lines[0].startswith(f"warren: cannot load the definitions dump in {raft}: ")


def test_settings_keep_the_flags_order_of_precedence():
    # the failures above are the only exits: valid settings still load as before
    assert load_settings(["--amqp-port", "6000"], env={}).amqp_port == 6000


def test_an_address_that_is_not_host_and_port(tmp_path):
    code, lines = warren("--data-dir", str(tmp_path / "d"), "--amqp-port", str(free_port()),
                         "--http-port", str(free_port()), "--raft-address", "127.0.0.1:x")
    assert code == 64
    assert lines == ["warren: bad address '127.0.0.1:x': expected host:port"]


def test_a_tls_certificate_that_cannot_be_loaded(tmp_path):
    code, lines = warren(*ports(tmp_path), "--amqps-port", str(free_port()),
                         "--tls-cert", str(tmp_path / "missing.pem"))
    assert code == 64
    assert lines == ["warren: cannot use the TLS certificate, key or CA: "
                     "No such file or directory"]
