"""`warrenctl verify_vhost`: do the copies of a vhost hold the same thing?  Run on the owner.

Copies move on with every write, so they are compared at one offset: the owner holds the
vhost's writes (its clients are not read, as in a move's pause), flushes, and waits until
every in-sync replica has acked its newest offset O.  Then it opens a read transaction on
its own store and asks every replica to do the same (cluster/digest.py); once they all
have, the writes go on, and the digests are computed from those transactions on threads.
A copy agrees when it was read at the owner's position and its digest equals the owner's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from cluster import shards
from cluster.digest import DigestClient
from node.amqp import errors
from node.amqp.errors import ChannelError

if TYPE_CHECKING:
    from node.runtime.broker import Broker

log = logging.getLogger("warren.verify")

DRAIN_TIMEOUT = 5.0  # in-sync replicas reaching the owner's offset, writes held
OPEN_TIMEOUT = 5.0  # a replica opening its read transaction, writes held
DIGEST_TIMEOUT = 600.0  # hashing a large copy, writes flowing again
ATTEMPTS = 3  # a write that is not a client's (an expiry) may move the owner on


async def verify_vhost(broker: "Broker", name: str) -> dict[str, Any]:
    """Compare the copies of a vhost, or of one shard of it (``name`` a unit key)."""
    d = broker.runtime.units.get(name)
    if d is None:
        raise ChannelError(errors.NOT_FOUND, f"no {shards.label(name)}")
    owner = d.get("owner") or broker.settings.node_name
    if owner != broker.settings.node_name:
        raise ChannelError(errors.PRECONDITION_FAILED,
                           f"{shards.label(name)} is owned by {owner}, not by this node")
    store = broker.stores.get(name)
    vhost, shard = shards.split(name)
    vh = broker.runtime.vhosts.get(vhost)
    if store is None or vh is None:
        raise ChannelError(errors.PRECONDITION_FAILED,
                           f"{shards.label(name)} is not served here")
    for _ in range(ATTEMPTS):
        report = await _attempt(broker, name, d, store, vh)
        if report is not None:
            if broker.runtime.sharded(vhost):
                report.update(vhost=vhost, shard=shard)
            return report
    raise ChannelError(errors.PRECONDITION_FAILED,
                       f"{shards.label(name)}: the owner's store moved on while the copies "
                       f"were read, {ATTEMPTS} times; try again")


async def _attempt(broker: "Broker", name: str, d: dict, store: Any, vh: Any
                   ) -> dict[str, Any] | None:
    replication = broker.roles
    source = replication.sources.get(name)
    in_sync = set(d.get("in_sync", []))
    asked: dict[str, DigestClient | str] = {}
    paused = [*vh.connections, *replication.link_sessions]  # clients and other nodes' links
    started = time.monotonic()
    for conn in paused:  # publishes and acks pause: nothing new reaches the store
        conn.hold_reading("verify")
    try:
        await asyncio.shield(store.flush())
        offset = store.last_offset
        if source is not None:
            waits = [source.drained_to(node, DRAIN_TIMEOUT) for node in in_sync]
            for node, outcome in zip(in_sync, await asyncio.gather(
                    *waits, return_exceptions=True), strict=True):
                if isinstance(outcome, BaseException):
                    asked[node] = f"did not reach offset {offset}: {outcome}"
        opened, done = store.digest()
        position = await opened
        if position[1] != offset:
            return None
        others = [node for node in d.get("replicas", []) if node not in asked]
        for node, session in zip(others, await asyncio.gather(
                *(_ask(broker, name, node, offset) for node in others)), strict=True):
            asked[node] = session
        waiting = [c.opened for c in asked.values() if isinstance(c, DigestClient)]
        if waiting:
            await asyncio.wait(waiting, timeout=OPEN_TIMEOUT)
    finally:
        for conn in paused:
            conn.release_reading("verify")
    held_ms = (time.monotonic() - started) * 1000
    mine = await asyncio.wait_for(done, DIGEST_TIMEOUT)
    copies = [{"node": broker.settings.node_name, "role": "owner", "in_sync": True,
               "epoch": position[0], "offset": position[1], "digest": mine, "agree": True}]
    for node, session in asked.items():
        copy: dict[str, Any] = {"node": node, "role": "replica", "in_sync": node in in_sync,
                                "epoch": None, "offset": None, "digest": None,
                                "agree": False}
        copies.append(copy)
        if isinstance(session, str):
            copy["error"] = session
            continue
        try:
            theirs = session.opened.result() if session.opened.done() else None
            if theirs is None:
                raise ConnectionError("no read transaction within "
                                      f"{OPEN_TIMEOUT:g} s")
            copy["epoch"], copy["offset"] = theirs
            copy["digest"] = await asyncio.wait_for(asyncio.shield(session.done),
                                                    DIGEST_TIMEOUT)
            copy["agree"] = theirs == position and copy["digest"] == mine
            if theirs != position:
                copy["error"] = (f"read at ({theirs[0]}, {theirs[1]}), not at the owner's "
                                 f"({position[0]}, {position[1]})")
        except (ConnectionError, asyncio.TimeoutError) as e:
            copy["error"] = str(e) or type(e).__name__
        finally:
            session.close()
    agree = all(c["agree"] for c in copies)
    if not agree:
        log.warning("%s: copies disagree at offset %d: %s", shards.label(name), position[1],
                    ", ".join(c["node"] for c in copies if not c["agree"]))
    return {"vhost": name, "epoch": d.get("epoch"), "offset": position[1],
            "position": list(position), "agree": agree, "held_ms": round(held_ms, 1),
            "copies": copies}


async def _ask(broker: "Broker", name: str, node: str, offset: int) -> DigestClient | str:
    address = (broker.runtime.nodes.get(node) or {}).get("forward")
    if not address:
        return f"no cluster address known for {node}"
    try:
        transport, link = await asyncio.wait_for(broker.roles.connect(
            address, {"kind": "digest", "vhost": name, "offset": offset,
                      "node": broker.settings.node_name}), OPEN_TIMEOUT)
    except (OSError, ConnectionError, asyncio.TimeoutError) as e:
        return f"cannot reach {node}: {e or type(e).__name__}"
    session = DigestClient()
    session.take_over(transport, link)
    return session
