"""The web UI: static HTML, CSS and JavaScript from node/http/static/ (no build step).  The
page itself needs no login; its script asks for credentials and calls the API with them."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).with_name("static")

routes = web.RouteTableDef()


@routes.get("/")
async def index(request: web.Request) -> web.FileResponse:
    """The management UI."""
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


routes.static("/static", STATIC)
