"""TLS contexts from RabbitMQ's `ssl_options`, as flags and WARREN_* variables.

Client-facing (AMQPS on --amqps-port, HTTPS on the management port with --http-tls):
  --tls-cert, --tls-key      the node's certificate chain and key (PEM)
  --tls-ca                   CA bundle that client certificates are checked against
  --tls-verify none|peer     ssl_options.verify: peer asks clients for a certificate
  --tls-fail-if-no-peer-cert ssl_options.fail_if_no_peer_cert: and refuses those without

Between nodes (--cluster-tls): every connection to another node's cluster port (forwarded
client connections, and any other session on that port such as replication) and the
management API's relay to a vhost's owner run over mutual TLS: each node presents
--tls-cert and accepts only peers whose certificate chains to --tls-ca (the cluster's CA).
Host names are not checked between nodes: nodes address each other by whatever their
records say (often an IP), and the CA plus the cluster secret's HMAC are the wall.

A new kind of session on the cluster port needs nothing of its own: the listener is built
with `cluster_server_ssl`, and a connecting node passes `cluster_client_ssl` (see
`node.clients.forwarding.open_cluster_connection`)."""

from __future__ import annotations

import functools
import ssl
from typing import Any, Protocol


class TLSSettings(Protocol):
    """The settings TLS is made from (node/config.py's Settings, which checks them with
    `validate` and so is not imported here)."""

    tls_cert: str
    tls_key: str
    tls_ca: str
    tls_verify: str
    tls_fail_if_no_peer_cert: bool
    cluster_tls: bool
    http_tls: bool

__all__ = ["cluster_client_ssl", "cluster_server_ssl", "peer_common_name", "server_ssl"]

VERIFY_MODES = ("none", "peer")


def server_ssl(settings: TLSSettings) -> ssl.SSLContext | None:
    """The context for AMQPS and HTTPS, or None when no certificate is configured."""
    if not settings.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.tls_cert, settings.tls_key or None)
    if settings.tls_ca:
        ctx.load_verify_locations(settings.tls_ca)
    if settings.tls_verify == "peer":
        ctx.verify_mode = (ssl.CERT_REQUIRED if settings.tls_fail_if_no_peer_cert
                           else ssl.CERT_OPTIONAL)
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _cluster_context(settings: TLSSettings, purpose: ssl.Purpose) -> ssl.SSLContext | None:
    if not settings.cluster_tls:
        return None
    return _cluster_context_for(settings.tls_cert, settings.tls_key, settings.tls_ca, purpose)


@functools.lru_cache(maxsize=8)
def _cluster_context_for(cert: str, key: str, ca: str,
                         purpose: ssl.Purpose) -> ssl.SSLContext:
    # one context per process and direction: connections to other nodes reuse it (and its
    # session cache) instead of reading the certificate files each time
    ctx = ssl.create_default_context(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key or None)
    ctx.load_verify_locations(ca)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED  # both ways: only nodes of this cluster's CA
    return ctx


def cluster_server_ssl(settings: TLSSettings) -> ssl.SSLContext | None:
    """For the cluster port's listener (None: plain TCP)."""
    return _cluster_context(settings, ssl.Purpose.CLIENT_AUTH)


def cluster_client_ssl(settings: TLSSettings) -> ssl.SSLContext | None:
    """For connections to another node's cluster port or HTTP relay (None: plain)."""
    return _cluster_context(settings, ssl.Purpose.SERVER_AUTH)


def relay_ssl(settings: TLSSettings) -> ssl.SSLContext | bool:
    """For the management API's relay to another node's HTTPS port (--http-tls): the
    cluster's mutual TLS when --cluster-tls, else trust --tls-ca (or the system's CAs)."""
    ctx = cluster_client_ssl(settings)
    if ctx is not None:
        return ctx
    ctx = ssl.create_default_context(cafile=settings.tls_ca or None)
    ctx.check_hostname = False  # nodes are addressed by their records, often an IP
    return ctx


def relay_scheme(settings: TLSSettings) -> str:
    return "https" if settings.http_tls else "http"


def validate(settings: TLSSettings) -> str | None:
    """What is wrong with the TLS settings, or None."""
    if settings.tls_verify not in VERIFY_MODES:
        return f"--tls-verify must be one of {', '.join(VERIFY_MODES)}"
    if settings.http_tls and not settings.tls_cert:
        return "--http-tls needs --tls-cert"
    if settings.cluster_tls and not (settings.tls_cert and settings.tls_ca):
        return "--cluster-tls needs --tls-cert and --tls-ca (the cluster's CA)"
    if settings.tls_fail_if_no_peer_cert and settings.tls_verify != "peer":
        return "--tls-fail-if-no-peer-cert needs --tls-verify peer"
    return None


def peer_common_name(transport: Any) -> str | None:
    """The CN of a verified client certificate (EXTERNAL authentication), or None."""
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
