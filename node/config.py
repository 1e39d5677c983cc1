"""Node settings: embedded defaults, overridden by WARREN_* environment variables, overridden
by command-line flags.  One place, so scripts, docker-compose and tests can run many nodes."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import NoReturn

# Where RabbitMQ releases differ in what a client sees (the default max message size,
# x-last-death-* headers), WarrenMQ follows this one: docs/RABBITMQ-VERSION.md
RABBITMQ_REFERENCE = "4.0"


@dataclass
class Settings:
    node_name: str = "warren@localhost"
    data_dir: str = "./data/warren"
    amqp_host: str = "0.0.0.0"
    amqp_port: int = 5672
    http_host: str = "0.0.0.0"
    http_port: int = 15672
    raft_address: str = "127.0.0.1:25672"
    # where other nodes reach this one for forwarded client connections (DESIGN: 25673)
    forward_address: str = "127.0.0.1:25673"
    peers: list[str] = field(default_factory=list)
    cluster_secret: str = ""
    default_vhost: str = "/"
    default_user: str = "guest"
    default_pass: str = "guest"
    # RabbitMQ's negotiation defaults
    channel_max: int = 2047
    frame_max: int = 131072
    heartbeat: int = 60
    max_message_size: int = 16 * 1024 * 1024  # RabbitMQ 4.0's (3.x: 128 MiB)
    # paging: messages kept in memory per queue before the rest stays in LMDB only
    queue_memory_messages: int = 20000
    sync: bool = True
    # resource alarms (RabbitMQ's defaults: 0.4 of RAM, 50 MB free disk)
    vm_memory_high_watermark: float = 0.4
    vm_memory_high_watermark_bytes: int = 0
    disk_free_limit: int = 50_000_000
    alarm_check_interval: float = 1.0
    # RabbitMQ's delivery acknowledgement timeout (consumer_timeout), ms; 0 = none
    consumer_timeout: int = 1_800_000
    # how often the management plane samples counters into rates (RabbitMQ's name, ms)
    collect_statistics_interval: int = 5000
    # vhost replication: copies of each vhost's store, the owner's included
    # (capped at the cluster's size; 1 = no replicas); copies that must be in sync for a
    # persistent publish to be confirmed rather than nacked; how long an owner (or a
    # replica) may be silent before it is failed over (or dropped from the in-sync set), s
    replication_factor: int = 3
    min_in_sync: int = 1
    failover_timeout: float = 3.0
    log_level: str = "info"
    # TLS (RabbitMQ's ssl_options; see node/tls.py): AMQPS listens only with a certificate
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_verify: str = "none"
    tls_fail_if_no_peer_cert: bool = False
    amqps_port: int = 5671
    http_tls: bool = False  # the management port speaks HTTPS with the same certificate
    cluster_tls: bool = False  # nodes talk to each other over mutual TLS with --tls-ca

    @property
    def raft_port(self) -> int:
        return int(self.raft_address.rsplit(":", 1)[1])


class SettingsError(ValueError):
    """A flag or WARREN_* variable that cannot be used; `warren` prints it as one line."""


class _Parser(argparse.ArgumentParser):
    # argparse prints usage and exits 2; the node prints one line and exits EX_USAGE
    def error(self, message: str) -> NoReturn:
        raise SettingsError(message)


# settings that may be read from a file named by WARREN_<NAME>_FILE (Docker secrets), as
# RabbitMQ's image reads RABBITMQ_DEFAULT_PASS_FILE
FILE_SETTINGS = ("default_user", "default_pass", "cluster_secret")


def _read_secret_file(key: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            # a file written with `echo` ends in a newline that is no part of the secret
            return f.read().rstrip("\r\n")
    except OSError as exc:
        raise SettingsError(f"{key}: cannot read {path}: {exc.strerror}") from None


_BOOL = {"1": True, "true": True, "yes": True, "on": True,
         "0": False, "false": False, "no": False, "off": False}


def _convert(name: str, typ: object, raw: str) -> object:
    if typ in (int, "int", float, "float"):
        kind = int if typ in (int, "int") else float
        try:
            return kind(raw)
        except ValueError:
            raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if typ in (bool, "bool"):
        try:
            return _BOOL[raw.strip().lower()]
        except KeyError:
            raise SettingsError(f"{name}: expected a boolean, got {raw!r}") from None
    if typ in ("list[str]",) or str(typ).startswith("list"):
        return [p.strip() for p in raw.split(",") if p.strip()]
    return raw


def load_settings(argv: list[str] | None = None,
                  env: Mapping[str, str] | None = None) -> Settings:
    """Settings from defaults, then `env` (os.environ), then `argv`; raises SettingsError
    for anything unusable (`--help` still prints and exits)."""
    if env is None:
        env = os.environ
    s = Settings()
    for f in fields(Settings):
        key = "WARREN_" + f.name.upper()
        if key in env:
            setattr(s, f.name, _convert(f.name, f.type, env[key]))
        elif f.name in FILE_SETTINGS and env.get(key + "_FILE"):
            setattr(s, f.name, _read_secret_file(key + "_FILE", env[key + "_FILE"]))
    p = _Parser(prog="warren", description="Start a WarrenMQ node.")
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        p.add_argument(flag, dest=f.name, default=None,
                       help=f"(env WARREN_{f.name.upper()}; default {getattr(s, f.name)!r})")
    args = p.parse_args(argv)
    for f in fields(Settings):
        raw = getattr(args, f.name)
        if raw is not None:
            setattr(s, f.name, _convert(f.name, f.type, raw))
    if s.peers and not s.cluster_secret:
        p.error("a cluster of more than one node needs --cluster-secret (or WARREN_CLUSTER_SECRET)")
    if s.frame_max < 4096:
        p.error("--frame-max must be at least 4096")
    if s.replication_factor < 1 or s.min_in_sync < 1:
        p.error("--replication-factor and --min-in-sync must be at least 1")
    if s.failover_timeout <= 0:
        p.error("--failover-timeout must be positive")
    from node.tls import validate
    problem = validate(s)
    if problem:
        p.error(problem)
    return s
