"""Settings: embedded defaults < WARREN_* environment < flags; a cluster needs a secret."""

from __future__ import annotations

import pytest

from node.config import RABBITMQ_REFERENCE, SettingsError, load_settings
from tests.nodeproc import REPO


def test_defaults_are_rabbitmq_like():
    s = load_settings([], env={})
    assert (s.amqp_port, s.http_port, s.channel_max, s.frame_max, s.heartbeat) == (
        5672, 15672, 2047, 131072, 60)
    assert s.default_vhost == "/" and s.default_user == "guest"


def test_one_rabbitmq_version_is_followed_and_said_so():
    # the 16 MiB default and x-last-death-* headers are RabbitMQ 4.0's;
    # the README and docs name the same release the code follows
    assert RABBITMQ_REFERENCE == "4.0"
    assert load_settings([], env={}).max_message_size == 16 * 1024 * 1024
    readme = (REPO / "README.md").read_text()
    doc = (REPO / "docs" / "RABBITMQ-VERSION.md").read_text()
    assert f"follows **RabbitMQ {RABBITMQ_REFERENCE}**" in readme
    assert f"**RabbitMQ {RABBITMQ_REFERENCE}.**" in doc


def test_environment_then_flags():
    env = {"WARREN_AMQP_PORT": "5999", "WARREN_NODE_NAME": "a@h", "WARREN_SYNC": "false",
           "WARREN_PEERS": "h1:1,h2:2", "WARREN_CLUSTER_SECRET": "s",
           "WARREN_VM_MEMORY_HIGH_WATERMARK": "0.5"}
    s = load_settings(["--amqp-port", "6000", "--data-dir", "/tmp/x"], env=env)
    assert s.amqp_port == 6000  # the flag wins
    assert s.node_name == "a@h" and s.sync is False and s.data_dir == "/tmp/x"
    assert s.peers == ["h1:1", "h2:2"] and s.vm_memory_high_watermark == 0.5


def test_a_cluster_refuses_to_start_without_a_secret():
    with pytest.raises(SettingsError, match="needs --cluster-secret"):
        load_settings(["--peers", "127.0.0.1:25672,127.0.0.1:26672"], env={})


def test_bad_values_are_refused():
    with pytest.raises(SettingsError, match="at least 4096"):
        load_settings(["--frame-max", "100"], env={})
    with pytest.raises(SettingsError, match="expected a boolean"):
        load_settings([], env={"WARREN_SYNC": "maybe"})
    with pytest.raises(SettingsError, match="amqp_port: expected a number, got 'x'"):
        load_settings(["--amqp-port", "x"], env={})
    with pytest.raises(SettingsError, match="unrecognized arguments: --amqp-prot"):
        load_settings(["--amqp-prot", "1"], env={})


def test_credentials_and_secret_from_files(tmp_path):
    """Docker secrets: WARREN_<NAME>_FILE names a file holding the value."""
    (tmp_path / "user").write_text("admin\n")
    (tmp_path / "pass").write_text("s3cret\n")
    (tmp_path / "secret").write_text("cluster-key")
    s = load_settings([], env={"WARREN_DEFAULT_USER_FILE": str(tmp_path / "user"),
                               "WARREN_DEFAULT_PASS_FILE": str(tmp_path / "pass"),
                               "WARREN_CLUSTER_SECRET_FILE": str(tmp_path / "secret")})
    assert (s.default_user, s.default_pass, s.cluster_secret) == (
        "admin", "s3cret", "cluster-key")
    # the plain variable wins over its _FILE variant
    s = load_settings([], env={"WARREN_DEFAULT_USER": "ops",
                               "WARREN_DEFAULT_USER_FILE": str(tmp_path / "user")})
    assert s.default_user == "ops"
    with pytest.raises(SettingsError, match="WARREN_DEFAULT_PASS_FILE: cannot read"):
        load_settings([], env={"WARREN_DEFAULT_PASS_FILE": str(tmp_path / "missing")})


def test_tls_options_as_rabbitmq_ssl_options():
    s = load_settings(["--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-ca", "ca.pem",
                       "--tls-verify", "peer", "--tls-fail-if-no-peer-cert", "true",
                       "--http-tls", "true"], env={"WARREN_AMQPS_PORT": "5999"})
    assert (s.tls_cert, s.tls_key, s.tls_ca, s.tls_verify) == ("c.pem", "k.pem", "ca.pem",
                                                                "peer")
    assert s.tls_fail_if_no_peer_cert and s.http_tls and s.amqps_port == 5999
    assert load_settings([], env={}).amqps_port == 5671
    for argv, why in ((["--tls-verify", "sometimes"], "--tls-verify must be one of"),
                      (["--http-tls", "true"], "--http-tls needs --tls-cert"),
                      (["--tls-cert", "c", "--cluster-tls", "true"], "needs --tls-cert and "
                       "--tls-ca"),
                      (["--tls-fail-if-no-peer-cert", "true"], "needs --tls-verify peer")):
        with pytest.raises(SettingsError, match=why):
            load_settings(argv, env={})
