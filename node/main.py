"""`warren`: start a WarrenMQ node (AMQP listener, management HTTP API, Raft definitions,
LMDB message stores) with embedded defaults, WARREN_* environment variables and flags."""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from cluster import membership
from node.config import Settings, SettingsError, load_settings
from node.health import write_token
from node.shutdown import Shutdown
from node.startup import (
    EX_CONFIG,
    EX_DATAERR,
    EX_USAGE,
    StartupError,
    listen_error,
    preflight,
    split_address,
)

if TYPE_CHECKING:
    from cluster.raft import MetadataStore

log = logging.getLogger("warren")

# how often a node that waits for a Raft quorum says so (and why)
QUORUM_LOG_INTERVAL = 10.0
SWITCH_INTERVAL = 0.001  # s: how long another thread waits for the GIL at most


async def wait_for_quorum(metadata: "MetadataStore", stop: asyncio.Event) -> bool:
    """Wait until Raft has a leader and this node has caught up, however long it takes
    (peers may come up minutes later); False if the node is told to stop meanwhile.
    A supervisor's restart loop is not the recovery path: the node waits, saying why."""
    from cluster.raft import ClusterUnavailable
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while True:
            attempt = asyncio.ensure_future(metadata.start(timeout=QUORUM_LOG_INTERVAL))
            await asyncio.wait({attempt, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not attempt.done():  # told to stop (SIGTERM from compose, ^C)
                attempt.cancel()
                await asyncio.gather(attempt, return_exceptions=True)
                return False
            try:
                attempt.result()
                return True
            except ClusterUnavailable:
                log.warning("no Raft quorum yet: %s; still waiting", metadata.waiting_reason())
            except RuntimeError as exc:  # the definitions dump on disk cannot be loaded
                raise StartupError(EX_DATAERR, str(exc)) from None
    finally:
        stopped.cancel()


def tls_contexts(settings: Settings) -> tuple[Any, Any]:
    """AMQPS/HTTPS and cluster-port TLS contexts; an unusable certificate, key or CA is one
    line (EX_USAGE), like any other setting that cannot be used."""
    import ssl

    from node.tls import cluster_server_ssl, server_ssl
    try:
        return server_ssl(settings), cluster_server_ssl(settings)
    except (OSError, ssl.SSLError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise StartupError(EX_USAGE, f"cannot use the TLS certificate, key or CA: {why}") from None


async def _listen(what: str, host: str, port: int, start: Any) -> Any:
    try:
        return await start()
    except OSError as exc:  # taken between the preflight probe and now
        raise listen_error(what, host, port, exc) from None


async def check_not_alone(settings: Settings, metadata: "MetadataStore",
                          record: membership.Membership | None) -> None:
    """A node without a cluster record that came up as a cluster of one on definitions
    naming other members (a record deleted, data of an older release) has just committed
    outside its cluster: its log and directory are marked as forked, so that the cluster
    refuses it, and it stops (cluster/membership.py)."""
    if record is not None or metadata.status().get("partners"):
        return
    others = membership.foreign_members(metadata.self_address,
                                        metadata.snapshot().get("nodes", {}))
    if not others:
        return
    old, forked_id = metadata.cluster_id, membership.new_cluster_id()
    # in the log itself, so that the tag of its Raft messages says so without the record
    await metadata.submit({"op": "fork_cluster", "cluster_id": forked_id})
    forked = membership.fork(settings.data_dir, old, forked_id)
    raise StartupError(
        EX_CONFIG,
        f"the data directory {os.path.abspath(settings.data_dir)} holds the definitions of "
        f"a cluster with members {', '.join(others)}, but this node started as a cluster of "
        f"one (no WARREN_PEERS): its Raft log now has entries written outside that cluster, "
        f"which will refuse it (recorded as cluster {forked.cluster_id}); move the "
        "directory away and join the node as a new member")


def record_membership(settings: Settings, metadata: "MetadataStore",
                      record: membership.Membership | None) -> None:
    """Write down (or bring up to date) the cluster this data directory belongs to."""
    partners = metadata.status().get("partners", {})
    members = sorted({metadata.self_address, *partners})
    cluster_id = (record.cluster_id if record is not None else "") or metadata.cluster_id
    if not cluster_id:
        return
    if record is not None and record.cluster_id == cluster_id and \
            sorted(record.members) == members:
        return
    membership.write(settings.data_dir, membership.Membership(cluster_id, members))


async def serve(settings: Settings, shutdown: Shutdown) -> None:
    from cluster.raft import MetadataStore
    from node.clients.connection import AMQPConnection
    from node.http.api import start_http
    from node.runtime.broker import Broker

    loop = asyncio.get_running_loop()
    record = preflight(settings)
    from cluster import journal
    from node.alarms import node_reserve
    reserve = node_reserve(settings.data_dir)

    def make_room() -> bool:
        # Raft's own writes come first on a full disk: the node's reserve is given back
        freed = reserve.release()
        if freed:
            log.warning("disk full: the node's reserve of %d bytes released for Raft", freed)
        return bool(freed)
    journal.on_disk_full = make_room
    stop = shutdown.requested
    metadata = MetadataStore(self_address=settings.raft_address, peers=settings.peers,
                             data_dir=settings.data_dir, secret=settings.cluster_secret or None,
                             loop=loop, cluster_id=record.cluster_id if record else "")
    tls, cluster_tls = tls_contexts(settings)  # a bad certificate stops here, before Raft
    try:
        ready = await wait_for_quorum(metadata, stop)
    except OSError as exc:  # the Raft port, taken since the probe
        await metadata.close()
        raise listen_error("Raft", *split_address(settings.raft_address), exc) from None
    if not ready:
        log.info("stopped while waiting for a Raft quorum")
        await metadata.close()
        return
    try:
        await check_not_alone(settings, metadata, record)
    except StartupError:
        await metadata.close()
        raise
    shutdown.at("starting the broker (recovering queues)")
    broker = Broker(settings, metadata)
    await broker.start()
    record_membership(settings, metadata, record)
    if stop.is_set():  # told to stop while recovering: do not open the listeners
        shutdown.at("stopping the broker")
        await broker.stop()
        return
    forward_server = None
    if settings.cluster_secret:
        from node.clients.forwarding import start_forward_server
        fhost, fport = split_address(settings.forward_address, 25673)
        # the address it is given (like Raft's): cluster-internal, behind the secret too
        forward_server = await _listen(
            "forwarded connections", fhost, fport,
            lambda: start_forward_server(broker.roles.accept, fhost, fport, settings.cluster_secret,
                                         lambda: AMQPConnection(broker), ssl=cluster_tls))
    server = await _listen(
        "AMQP", settings.amqp_host, settings.amqp_port,
        lambda: loop.create_server(lambda: AMQPConnection(broker), settings.amqp_host,
                                   settings.amqp_port, reuse_address=True, backlog=1024))
    amqps_server = None
    if tls is not None:  # AMQPS listens only when a certificate is given, as in RabbitMQ
        amqps_server = await _listen(
            "AMQPS", settings.amqp_host, settings.amqps_port,
            lambda: loop.create_server(
                lambda: AMQPConnection(broker), settings.amqp_host, settings.amqps_port,
                reuse_address=True, backlog=1024, ssl=tls, ssl_handshake_timeout=10.0))
        log.info("AMQPS on %s:%d", settings.amqp_host, settings.amqps_port)
    token = write_token(settings.data_dir)
    http_runner = await _listen(
        "HTTP", settings.http_host, settings.http_port,
        lambda: start_http(broker, settings.http_host, settings.http_port,
                           ssl_context=tls if settings.http_tls else None, health_token=token))
    http_runner.app["listeners"].update({"AMQP": server, "AMQPS": amqps_server,
                                         "forwarding": forward_server})
    log.info("node %s: AMQP on %s:%d, HTTP on %s:%d, raft on %s, data in %s",
             settings.node_name, settings.amqp_host, settings.amqp_port, settings.http_host,
             settings.http_port, settings.raft_address, os.path.abspath(settings.data_dir))
    print(f"warren: node {settings.node_name} ready on amqp port {settings.amqp_port}",
          flush=True)
    shutdown.at("serving")
    await stop.wait()
    log.info("shutting down")
    shutdown.at("closing the listeners")
    server.close()
    if amqps_server is not None:
        amqps_server.close()
    if forward_server is not None:
        forward_server.close()
    await http_runner.cleanup()
    await broker.stop(shutdown.at)
    shutdown.at("exiting")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "perf":
        from node.tools.perf import main as perf_main
        perf_main(args[1:])
        return
    if args and args[0] == "healthcheck":
        from node.healthcheck import main as healthcheck_main
        sys.exit(healthcheck_main(args[1:]))
    try:
        settings = load_settings(args)
    except SettingsError as exc:
        fail(EX_USAGE, f"warren: {exc} (warren --help lists every setting)")
    # The hot path allocates several small objects per message, none in reference cycles;
    # the cyclic GC's default gen-0 threshold (700) made it run thousands of times a second.
    gc.set_threshold(50_000, 20, 20)
    # a node killed by a signal (SIGBUS from a page of an mmap'd file on a full disk, a
    # crash in a C extension) leaves its Python stack on stderr, not an unexplained silence
    faulthandler.enable()
    # Raft (pysyncobj's tick thread) and the stores' writer threads wait for the GIL while
    # the event loop runs; at the default 5 ms a Raft round trip under load paid it at
    # every hop (a dead replica left the in-sync set 70 ms after its death instead of 7)
    sys.setswitchinterval(SWITCH_INTERVAL)
    logging.basicConfig(level=getattr(logging, settings.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop  # optional: a faster event loop when installed
    except ImportError:
        run: Any = asyncio.run
    else:
        run = uvloop.run
    async def main_task() -> None:
        shutdown = Shutdown(asyncio.get_running_loop())
        shutdown.install()
        await serve(settings, shutdown)

    try:
        run(main_task())
    except StartupError as exc:
        fail(exc.code, f"warren: {exc}")


def fail(code: int, line: str) -> NoReturn:
    print(line, file=sys.stderr, flush=True)
    # os._exit: Raft's tick thread may be running; nothing is left to flush
    os._exit(code)


if __name__ == "__main__":
    main()
