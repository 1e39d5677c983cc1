"""`warren`: start a WarrenMQ node (AMQP listener, management HTTP API, Raft definitions,
LMDB message stores) with embedded defaults, WARREN_* environment variables and flags."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys

from node.config import Settings, load_settings

log = logging.getLogger("warren")


async def serve(settings: Settings) -> None:
    from cluster.raft import MetadataStore
    from node.amqp.connection import AMQPConnection
    from node.broker import Broker
    from node.http.api import start_http

    loop = asyncio.get_running_loop()
    os.makedirs(settings.data_dir, exist_ok=True)
    metadata = MetadataStore(self_address=settings.raft_address, peers=settings.peers,
                             data_dir=settings.data_dir, secret=settings.cluster_secret or None,
                             loop=loop)
    from node.tls import cluster_server_ssl, server_ssl
    tls = server_ssl(settings)  # built before anything starts: a bad certificate stops here
    broker = Broker(settings, metadata)
    await broker.start()
    forward_server = None
    if settings.cluster_secret:
        from node.forwarding import start_forward_server
        fhost, _, fport = settings.forward_address.rpartition(":")
        # listen on every interface like Raft does; the secret is the wall (DESIGN 8)
        forward_server = await start_forward_server(broker, "0.0.0.0", int(fport),
                                                    settings.cluster_secret,
                                                    ssl=cluster_server_ssl(settings))
    server = await loop.create_server(lambda: AMQPConnection(broker), settings.amqp_host,
                                      settings.amqp_port, reuse_address=True, backlog=1024)
    amqps_server = None
    if tls is not None:  # AMQPS listens only when a certificate is given, as in RabbitMQ
        amqps_server = await loop.create_server(
            lambda: AMQPConnection(broker), settings.amqp_host, settings.amqps_port,
            reuse_address=True, backlog=1024, ssl=tls, ssl_handshake_timeout=10.0)
        log.info("AMQPS on %s:%d", settings.amqp_host, settings.amqps_port)
    http_runner = await start_http(broker, settings.http_host, settings.http_port,
                                   ssl_context=tls if settings.http_tls else None)
    log.info("node %s: AMQP on %s:%d, HTTP on %s:%d, raft on %s, data in %s",
             settings.node_name, settings.amqp_host, settings.amqp_port, settings.http_host,
             settings.http_port, settings.raft_address, os.path.abspath(settings.data_dir))
    print(f"warren: node {settings.node_name} ready on amqp port {settings.amqp_port}",
          flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    server.close()
    if amqps_server is not None:
        amqps_server.close()
    if forward_server is not None:
        forward_server.close()
    await http_runner.cleanup()
    await broker.stop()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "perf":
        from node.perf import main as perf_main
        perf_main(args[1:])
        return
    settings = load_settings(args)
    # The hot path allocates several small objects per message, none in reference cycles;
    # the cyclic GC's default gen-0 threshold (700) made it run thousands of times a second.
    gc.set_threshold(50_000, 20, 20)
    logging.basicConfig(level=getattr(logging, settings.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop  # optional: a faster event loop when installed
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
