"""The management plane's aiohttp application: RabbitMQ's management API, the web UI and
Prometheus metrics on one port (settings.http_port, 15672), served by every node.

Each module under node/http owns one part and its routes; this one only assembles them,
and starts and stops the statistics sampler with the application."""

from __future__ import annotations

import ssl

from aiohttp import web

from node.http import (
    access,
    cluster,
    connections,
    definitions,
    limits,
    messages,
    metrics,
    openapi,
    overview,
    topology,
    ui,
)
from node.http.auth import auth_middleware
from node.http.stats import Sampler
from node.runtime.broker import Broker

# order matters where paths overlap: literal paths before the {name} ones that would match
ROUTE_TABLES = (cluster.routes, limits.routes, overview.routes, connections.routes,
                access.routes, messages.routes, topology.routes, definitions.routes,
                metrics.routes, openapi.routes, ui.routes)


def create_app(broker: Broker) -> web.Application:
    app = web.Application(middlewares=[auth_middleware], client_max_size=64 * 1024 * 1024)
    app["broker"] = broker
    interval = getattr(broker.settings, "collect_statistics_interval", 5000) / 1000
    app["stats"] = Sampler(broker, interval)
    for table in ROUTE_TABLES:
        app.add_routes(table)
    app.on_startup.append(_start_sampler)
    app.on_cleanup.append(_stop_sampler)
    return app


async def _start_sampler(app: web.Application) -> None:
    app["stats"].start()


async def _stop_sampler(app: web.Application) -> None:
    await app["stats"].stop()


async def start_http(broker: Broker, host: str, port: int,
                     ssl_context: ssl.SSLContext | None = None,
                     health_token: str | None = None) -> web.AppRunner:
    app = create_app(broker)
    app["health_token"] = health_token
    # `warren` adds its other listeners, once they listen, for the health checks
    app["listeners"] = {}
    # at shutdown, requests still running (a move waiting for its target, a call relayed
    # to a hung owner) get a second, not aiohttp's 60: the node stops within 5 s
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
    await site.start()
    return runner
