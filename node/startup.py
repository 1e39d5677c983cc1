"""What `warren` checks before it starts anything, and how it fails: one line on stderr and
an exit code from sysexits(3), never a traceback, so a supervisor (systemd, compose) and an
operator both see what is wrong.

  64 EX_USAGE        a flag or WARREN_* variable cannot be used
  65 EX_DATAERR      the definitions on disk cannot be read
  69 EX_UNAVAILABLE  a port cannot be listened on (in use, or not an address of this host)
  73 EX_CANTCREAT    the data directory cannot be created or written
  78 EX_CONFIG       the settings contradict the data directory (its cluster membership)
"""

from __future__ import annotations

import errno
import os
import socket
import uuid

from cluster import membership
from node.alarms import reserve_room_at_start
from node.config import Settings

EX_USAGE = 64
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_CANTCREAT = 73
EX_CONFIG = 78


class StartupError(Exception):
    """The node cannot start; `str()` is the whole message, `code` the exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def split_address(address: str, default_port: int = 25672) -> tuple[str, int]:
    """``host:port`` (or ``host``, with the default port) -> (host, port)."""
    host, sep, port = address.strip().rpartition(":")
    if not sep:
        return address.strip(), default_port
    if not port.isdigit() or not host:
        raise StartupError(EX_USAGE, f"bad address {address!r}: expected host:port")
    return host, int(port)


def check_data_dir(path: str) -> None:
    """The data directory exists (or can be made) and this user can write in it: a volume
    owned by another user is the usual first-run mistake with containers."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".warren-write-test-{uuid.uuid4().hex}")
        try:
            with open(probe, "wb") as f:
                f.write(b"ok")
        except OSError as exc:
            # a full disk is writable: the node starts, serves what it holds and keeps
            # publishers blocked by the disk alarm until consuming makes room
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
        finally:
            if os.path.exists(probe):
                os.remove(probe)
        # files a previous run left must be readable too (a restored backup, a chown)
        for root, _dirs, files in os.walk(path):
            for name in files:
                full = os.path.join(root, name)
                if not os.access(full, os.R_OK | os.W_OK):
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), full)
    except OSError as exc:
        where = exc.filename or path
        raise StartupError(
            EX_CANTCREAT,
            f"cannot use the data directory {os.path.abspath(path)}: {where}: "
            f"{exc.strerror or exc} (uid {os.getuid()} must be able to read and write it)",
        ) from None


def listen_error(what: str, host: str, port: int, exc: OSError) -> StartupError:
    if exc.errno == errno.EADDRINUSE:
        why = "address already in use (is another node running?)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = "not an address of this host"
    else:
        why = exc.strerror or str(exc)
    return StartupError(EX_UNAVAILABLE, f"cannot listen for {what} on {host}:{port}: {why}")


def probe_listen(what: str, host: str, port: int) -> None:
    """Bind and release at once: a taken port is named before Raft starts waiting."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(EX_UNAVAILABLE, f"cannot listen for {what} on {host}:{port}: "
                           f"cannot resolve {host!r} ({exc.strerror})") from None
    family, kind, proto, _, sockaddr = infos[0]
    probe = socket.socket(family, kind, proto)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(sockaddr)
    except OSError as exc:
        raise listen_error(what, host, port, exc) from None
    finally:
        probe.close()


def raft_bind_host(settings: Settings) -> str:
    """Where the Raft and forwarding ports listen: the host of --raft-address (resp.
    --forward-address), loopback for a node alone without a secret (cluster/raft.py)."""
    if not settings.cluster_secret:
        return "127.0.0.1"
    return split_address(settings.raft_address)[0]


def check_membership(settings: Settings) -> membership.Membership | None:
    """The cluster the data directory belongs to (cluster/membership.py); a node whose
    directory records a cluster refuses to start alone on it."""
    try:
        record = membership.read(settings.data_dir)
    except ValueError as exc:
        raise StartupError(EX_DATAERR, str(exc)) from None
    why = membership.refusal(record, settings.data_dir, settings.peers)
    if why is not None:
        raise StartupError(EX_CONFIG, why)
    return record


def preflight(settings: Settings) -> membership.Membership | None:
    """Everything checked before Raft starts; returns the directory's cluster record."""
    check_data_dir(settings.data_dir)
    # before Raft writes its journal: on a full disk, the node's reserve makes room for it
    reserve_room_at_start(settings.data_dir)
    record = check_membership(settings)
    probe_listen("AMQP", settings.amqp_host, settings.amqp_port)
    probe_listen("HTTP", settings.http_host, settings.http_port)
    if getattr(settings, "tls_cert", ""):  # AMQPS listens only with a certificate
        probe_listen("AMQPS", settings.amqp_host, settings.amqps_port)
    probe_listen("Raft", raft_bind_host(settings), split_address(settings.raft_address)[1])
    if settings.cluster_secret:
        host, port = split_address(settings.forward_address, 25673)
        probe_listen("forwarded connections", host, port)
    return record
