"""Messages through the API (for development and debugging, as in RabbitMQ): publish to an
exchange, and peek at a queue with POST /get and an ackmode."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from aiohttp import web

from node.amqp import spec
from node.amqp.fields import AMQPSyntaxError
from node.amqp.frames import content_header_payload
from node.amqp.message import Message
from node.http.api_conventions import (
    bad_request,
    body,
    broker_of,
    check_permission,
    json_response,
    name,
    not_found,
    to_json_value,
    visible_vhosts,
)
from node.http.proxy import from_owner
from node.http.topology import queue_of

routes = web.RouteTableDef()

ACKMODES = ("ack_requeue_true", "reject_requeue_true", "ack_requeue_false",
            "reject_requeue_false")
PROPERTY_NAMES = set(spec.BasicProperties.__slots__)


def exchange_name(raw: str) -> str:
    # the default exchange has no name; URLs call it amq.default
    return "" if raw == "amq.default" else raw


def build_properties(raw: Any) -> spec.BasicProperties:
    if not isinstance(raw, dict):
        raise bad_request("'properties' must be a JSON object")
    unknown = set(raw) - PROPERTY_NAMES
    if unknown:
        raise bad_request(f"unknown message properties: {', '.join(sorted(unknown))}")
    props = dict(raw)
    for key in ("delivery_mode", "priority", "timestamp"):
        if key in props and props[key] is not None:
            try:
                props[key] = int(props[key])
            except (TypeError, ValueError):
                raise bad_request(f"property '{key}' must be an integer") from None
    if "headers" in props and props["headers"] is not None and not isinstance(
            props["headers"], dict):
        raise bad_request("property 'headers' must be a JSON object")
    return spec.BasicProperties(**props)


def decode_payload(payload: Any, encoding: Any) -> bytes:
    if not isinstance(payload, str):
        raise bad_request("'payload' must be a string")
    if encoding == "string":
        return payload.encode()
    if encoding == "base64":
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("payload is not valid base64") from None
    raise bad_request("'payload_encoding' must be \"string\" or \"base64\"")


@routes.post("/api/exchanges/{vhost}/{name}/publish")
async def publish(request: web.Request) -> web.Response:
    relayed = await from_owner(request, name(request, "vhost"))
    if relayed is not None:
        return relayed
    data = await body(request, "properties", "routing_key", "payload", "payload_encoding")
    vh = visible_vhosts(request)[0]
    xname = exchange_name(name(request, "name"))
    ex = vh.exchanges.get(xname)
    if ex is None:
        raise not_found()
    check_permission(request, vh.name, "write", "exchange", xname or "amq.default")
    if ex.internal:
        raise bad_request(f"ACCESS_REFUSED - cannot publish to internal exchange '{xname}' in "
                          f"vhost '{vh.name}'")
    b = broker_of(request)
    payload = decode_payload(data["payload"], data["payload_encoding"])
    if len(payload) > b.settings.max_message_size:
        raise bad_request(f"message size {len(payload)} is larger than configured max size "
                          f"{b.settings.max_message_size}")
    props = build_properties(data["properties"])
    try:
        header = content_header_payload(60, len(payload), props.encode())
    except (AMQPSyntaxError, TypeError, ValueError, OverflowError) as e:
        raise bad_request(f"invalid message properties: {e}") from None
    msg = Message.from_publish(xname, str(data["routing_key"]), header, payload)
    outcome = vh.publish(ex, msg)
    b.counters.count_publish(outcome.routed)
    if outcome.durable:
        await asyncio.shield(outcome.settled())  # answer once it is on disk (shared future)
    if outcome.rejected:  # what a publisher confirm would nack
        raise bad_request("Unable to publish message. Check queue limits.")
    return json_response({"routed": outcome.routed})


def _encode_payload(payload: bytes, encoding: str, truncate: int | None) -> tuple[Any, str]:
    if truncate is not None:
        payload = payload[:truncate]
    if encoding == "auto":
        try:
            return payload.decode("utf-8"), "string"
        except UnicodeDecodeError:
            pass
    return base64.b64encode(payload).decode(), "base64"


def properties_json(msg: Message) -> dict:
    p = msg.properties
    return {k: to_json_value(getattr(p, k)) for k in spec.BasicProperties.__slots__
            if getattr(p, k) is not None}


@routes.post("/api/queues/{vhost}/{name}/get")
async def get_messages(request: web.Request) -> web.Response:
    relayed = await from_owner(request, name(request, "vhost"))
    if relayed is not None:
        return relayed
    data = await body(request, "count", "ackmode", "encoding")
    vh, q = queue_of(request)
    check_permission(request, vh.name, "read", "queue", q.name)
    ackmode, encoding = data["ackmode"], data["encoding"]
    if ackmode not in ACKMODES:
        raise bad_request(f"'ackmode' must be one of {', '.join(ACKMODES)}")
    if encoding not in ("auto", "base64"):
        raise bad_request("'encoding' must be \"auto\" or \"base64\"")
    try:
        count = int(data["count"])
        truncate = int(data["truncate"]) if data.get("truncate") is not None else None
    except (TypeError, ValueError):
        raise bad_request("'count' and 'truncate' must be integers") from None
    requeue = ackmode.endswith("requeue_true")
    taken = []
    out = []
    for _ in range(max(0, count)):
        entry = q.get()
        if entry is None:
            break
        msg = entry.message
        payload, enc = _encode_payload(msg.body, encoding, truncate)
        out.append({"payload_bytes": len(msg.body), "redelivered": entry.redelivered,
                    "exchange": msg.exchange, "routing_key": msg.routing_key,
                    "message_count": q.message_count, "properties": properties_json(msg),
                    "payload": payload, "payload_encoding": enc})
        q.taken(entry)
        taken.append(entry)
    # requeue only at the end, or the next get would return the same message again
    if requeue:
        q.requeue([(e, None) for e in taken])
    elif ackmode.startswith("reject") and hasattr(q, "reject"):
        for e in taken:
            q.reject(e, None)  # dead-lettered when the queue says so, as basic.reject
    else:
        for e in taken:
            q.ack(e, None)
    return json_response(out)
