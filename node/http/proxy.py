"""Requests about a vhost's messages (publish, get, purge, a queue's live counts) are
answered by the node that owns the vhost; any other node relays them there, with the
caller's own credentials (users are replicated), so the API works from every node."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web

from cluster import shards
from node.http.api_conventions import broker_of, error_response
from node.tls import relay_scheme, relay_ssl

HOP_HEADER = "X-Warren-Forwarded"


def relay_session(broker: Any, timeout: float) -> aiohttp.ClientSession:
    # with --http-tls the relay (which carries the caller's Basic credentials) is HTTPS
    connector = (aiohttp.TCPConnector(ssl=relay_ssl(broker.settings))
                 if broker.settings.http_tls else None)
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout),
                                 connector=connector)


async def from_owner(request: web.Request, vhost: str,
                     timeout: float = 30.0) -> web.Response | None:
    """The owner's response if another node owns `vhost`; None to answer here."""
    b = broker_of(request)
    if b.runtime.owns(vhost) or request.headers.get(HOP_HEADER):
        return None
    owner = b.runtime.owner_of(vhost)
    node = b.runtime.records.member(owner or "")
    if node is None or not node.http:
        return error_response(503, "service_unavailable",
                              f"vhost '{vhost}' is owned by node '{owner}', which is unknown here")
    url = f"{relay_scheme(b.settings)}://{node.http}{request.rel_url}"
    headers = {"Authorization": request.headers.get("Authorization", ""), HOP_HEADER: "1"}
    if request.content_type:
        headers["Content-Type"] = request.content_type
    # body_exists, not can_read_body: the handler may have read (and cached) it already
    data = await request.read() if request.body_exists else None
    try:
        async with relay_session(b, timeout) as s:
            async with s.request(request.method, url, data=data, headers=headers) as r:
                body = await r.read()
                return web.Response(status=r.status, body=body,
                                    content_type=r.content_type or "application/json")
    except (aiohttp.ClientError, TimeoutError) as e:
        return error_response(503, "service_unavailable",
                              f"vhost '{vhost}' is owned by node '{owner}', which cannot be "
                              f"reached: {e}")


async def owner_list(request: web.Request, vhost: str, path: str) -> list | None:
    """A list the owner of `vhost` (or of a shard of it, by unit key) keeps (e.g. its
    queues with live counts), or None when this node owns it or the owner cannot say."""
    from urllib.parse import quote
    b = broker_of(request)
    if b.runtime.owns(vhost) or request.headers.get(HOP_HEADER):
        return None
    node = b.runtime.records.member(b.runtime.owner_of(vhost) or "")
    vhost = shards.split(vhost)[0]
    if node is None or not node.http:
        return None
    url = f"{relay_scheme(b.settings)}://{node.http}{path.format(vhost=quote(vhost, safe=''))}"
    headers = {"Authorization": request.headers.get("Authorization", ""), HOP_HEADER: "1"}
    try:
        async with relay_session(b, 5) as s:
            async with s.get(url, headers=headers) as r:
                if r.status == 200:
                    data = await r.json()
                    return data if isinstance(data, list) else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        pass
    return None
