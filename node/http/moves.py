"""Live moves and rebalances as streams of events, so that a terminal (warrenctl) and the
UI can follow a move that copies a large store.

A move runs on the owner of the unit it moves; any other node relays it there.  Asked with
``Accept: application/x-ndjson``, the answer is one JSON object a line: ``{"progress":
{...}}`` while the target catches up (at least every `PROGRESS_EVERY` seconds, and at once
when the first bytes of a snapshot are copied), then ``{"result": {...}}`` or ``{"error":
status, "reason": ...}``.  A rebalance runs where it was asked: it picks one move at a time
(cluster/rebalance.py), runs it through the unit's owner as above, and adds ``{"step":
...}`` before each move and ``{"moved": ...}`` after it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from cluster import rebalance, shards
from cluster.move_progress import MoveProgress
from node.amqp.errors import AMQPError
from node.http.api_conventions import broker_of, json_response
from node.http.auth import _STATUS_OF_AMQP
from node.http.proxy import HOP_HEADER, relay_session
from node.tls import relay_scheme

NDJSON = "application/x-ndjson"
PROGRESS_EVERY = 1.0  # seconds between two progress lines of a move that goes on
MOVE_HTTP_MARGIN = 60.0  # a relayed move's last steps, after its target is in sync
SETTLE_TIMEOUT = 10.0  # for this node's records to show a move's new owner

Event = dict[str, Any]


def wants_stream(request: web.Request) -> bool:
    return NDJSON in request.headers.get("Accept", "")


async def stream(request: web.Request, events: AsyncIterator[Event]) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"Content-Type": NDJSON})
    await response.prepare(request)
    try:
        async for event in events:
            await response.write(json.dumps(event).encode() + b"\n")
        await response.write_eof()
    except ConnectionError:
        # the caller left: a move under way goes on (a task of its own); a rebalance
        # stops after it
        pass
    return response


async def outcome(events: AsyncIterator[Event]) -> web.Response:
    """The last event as a plain answer (a caller that does not follow the progress)."""
    last: Event = {"error": 500, "reason": "no answer"}
    async for event in events:
        last = event
    if "error" in last:
        body = {"error": "bad_request" if last["error"] == 400 else "move_failed",
                "reason": last["reason"]}
        if "moves" in last:
            body["moves"] = last["moves"]
        return json_response(body, status=int(last["error"]))
    return json_response(last["result"])


def move_events(request: web.Request, unit: str, target: str,
                sync_timeout: float) -> AsyncIterator[Event]:
    """The events of one move, run here when this node owns ``unit``, else at its owner."""
    b = broker_of(request)
    if b.runtime.owns(unit) or request.headers.get(HOP_HEADER):
        return _local_move(b, unit, target, sync_timeout)
    return _remote_move(request, unit, target, sync_timeout)


async def _local_move(b: Any, unit: str, target: str,
                      sync_timeout: float) -> AsyncIterator[Event]:
    progress = MoveProgress(unit, target)
    # a task of its own: a caller that goes away does not stop a move half-way
    task = asyncio.ensure_future(b.roles.move(unit, target, sync_timeout, progress))
    shown, phase, copying = 0.0, progress.phase, False
    while not task.done():
        progress.changed.clear()
        waiter = asyncio.ensure_future(progress.changed.wait())
        await asyncio.wait({task, waiter}, timeout=PROGRESS_EVERY,
                           return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task.done():
            break
        now = time.monotonic()
        first_bytes = progress.copied > 0 and not copying
        if first_bytes or progress.phase != phase or now - shown >= PROGRESS_EVERY:
            shown, phase, copying = now, progress.phase, copying or progress.copied > 0
            yield {"progress": progress.as_json()}
    try:
        result = task.result()
    except AMQPError as e:
        yield {"error": _STATUS_OF_AMQP.get(e.code, 500), "reason": e.text}
        return
    yield {"result": result}


async def _remote_move(request: web.Request, unit: str, target: str,
                       sync_timeout: float) -> AsyncIterator[Event]:
    b = broker_of(request)
    owner = b.runtime.owner_of(unit) or ""
    node = b.runtime.records.member(owner)
    if node is None or not node.http:
        yield {"error": 503, "reason": f"{shards.label(unit)} is owned by node '{owner}', "
                                       "which is unknown here"}
        return
    vhost, shard = shards.split(unit)
    url = (f"{relay_scheme(b.settings)}://{node.http}/api/cluster/vhosts/"
           f"{quote(vhost, safe='')}/move")
    headers = {"Authorization": request.headers.get("Authorization", ""), HOP_HEADER: "1",
               "Accept": NDJSON}
    body = {"node": target, "shard": shard, "timeout": sync_timeout}
    try:
        async with relay_session(b, sync_timeout + MOVE_HTTP_MARGIN) as s:
            async with s.post(url, json=body, headers=headers) as r:
                if r.status != 200:
                    try:
                        reason = (await r.json()).get("reason", r.reason)
                    except (ValueError, aiohttp.ContentTypeError, AttributeError):
                        reason = r.reason
                    yield {"error": r.status, "reason": reason}
                    return
                if r.content_type != NDJSON:  # a node that answers in one piece
                    yield {"result": await r.json()}
                    return
                async for line in r.content:
                    if line.strip():
                        yield json.loads(line)
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        yield {"error": 503, "reason": f"{shards.label(unit)} is owned by node '{owner}', "
                                       f"which cannot be reached: {e!r}"}


async def rebalance_events(request: web.Request, vhosts: Iterable[str],
                           sync_timeout: float) -> AsyncIterator[Event]:
    """Spread each vhost's shard owners over the running nodes, one live move at a time;
    the first failure stops it (the moves made so far stay)."""
    b = broker_of(request)
    running = await b.placement.running_members()
    moves: list[dict[str, Any]] = []
    for vhost in vhosts:
        record = b.runtime.records.vhost(vhost)
        units = shards.units(vhost, record.shards if record else 1)
        for _ in range(2 * len(units) * max(len(running), 1)):  # a bound; it ends sooner
            step = rebalance.next_move(units, b.runtime.units, running)
            if step is None:
                break
            unit, giver, taker = step
            shard = shards.split(unit)[1]
            yield {"step": {"vhost": vhost, "shard": shard, "from": giver, "to": taker}}
            end: Event = {"error": 500, "reason": "the move gave no answer"}
            why = b.roles.available(unit)
            if why is not None:
                end = {"error": 400, "reason": why}
            else:
                async for event in move_events(request, unit, taker, sync_timeout):
                    if "progress" in event:
                        yield dict(event, vhost=vhost, shard=shard)
                    else:
                        end = event
            if "error" in end:
                done = "; ".join(f"shard {m['shard']} of '{m['vhost']}' {m['from']} -> "
                                 f"{m['to']}" for m in moves) or "none"
                yield {"error": end["error"], "moves": moves,
                       "reason": f"rebalance stopped: moving {shards.label(unit)} from "
                                 f"{giver} to {taker} failed: {end['reason']} "
                                 f"(moves made before: {done})"}
                return
            moved = {"vhost": vhost, "shard": shard, "from": giver, "to": taker,
                     **end.get("result", {})}
            moves.append(moved)
            yield {"moved": moved}
            await _settled(b, unit, taker)
    yield {"result": {"moves": moves}}


async def _settled(b: Any, unit: str, owner: str) -> None:
    """Wait for this node's records to show the move (the next choice counts it)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while (b.runtime.units.get(unit) or {}).get("owner") != owner \
            and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
