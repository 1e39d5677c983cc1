"""Definitions export and import in RabbitMQ's file format, so that a file exported from
RabbitMQ imports unchanged (users keep their password_hash + hashing_algorithm) and one
exported here imports into RabbitMQ.

Export reads the replicated definitions (what every node agrees on).  Import merges, as
RabbitMQ does: existing queues, exchanges and bindings are left as they are, users, vhosts,
permissions and policies are overwritten; on an error what was applied so far stays."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from node.amqp.errors import resource_text
from node.auth import HASHING_SHA256, hash_password
from node.exchanges.base import Destination
from node.exchanges.registry import STANDARD_EXCHANGES
from node.http.api_conventions import (
    ADMINISTRATOR,
    HTTPError,
    bad_request,
    broker_of,
    json_response,
    name,
    not_found,
    parse_tags,
    require,
)
from node.queues import types
from node.runtime.broker import PRODUCT, VERSION
from node.runtime.definitions import decode_args

routes = web.RouteTableDef()

BUILTIN_EXCHANGES = {n for n, _t, _i in STANDARD_EXCHANGES}


def _builtin(exchange: str) -> bool:
    # every vhost has these; RabbitMQ leaves them (and amq.rabbitmq.*) out of its exports
    return exchange in BUILTIN_EXCHANGES or exchange.startswith("amq.")


def _header() -> dict:
    return {"rabbit_version": VERSION, "rabbitmq_version": VERSION, "product_name": PRODUCT,
            "product_version": VERSION}


def _vhost_items(state: dict, vhost: str, keep_vhost: bool) -> dict[str, list]:
    def strip(d: dict) -> dict:
        return d if keep_vhost else {k: v for k, v in d.items() if k != "vhost"}

    policies = [strip({"vhost": p["vhost"], "name": p["name"], "pattern": p["pattern"],
                       "apply-to": p.get("apply_to", "all"), "definition": p["definition"],
                       "priority": p.get("priority", 0)})
                for p in state.get("policies", {}).get(vhost, {}).values()]
    queues = [strip({"name": q["name"], "vhost": vhost, "durable": True,
                     "auto_delete": q.get("auto_delete", False),
                     "arguments": decode_args(q.get("arguments"))})
              for q in state.get("queues", {}).get(vhost, {}).values()]
    exchanges = [strip({"name": x["name"], "vhost": vhost, "type": x["type"],
                        "durable": True, "auto_delete": x.get("auto_delete", False),
                        "internal": x.get("internal", False),
                        "arguments": decode_args(x.get("arguments"))})
                 for x in state.get("exchanges", {}).get(vhost, {}).values()
                 if not _builtin(x["name"])]
    bindings = [strip({"source": b["source"], "vhost": vhost, "destination": b["destination"],
                       "destination_type": b["destination_type"],
                       "routing_key": b["routing_key"],
                       "arguments": decode_args(b.get("arguments"))})
                for b in state.get("bindings", {}).get(vhost, {}).values()]
    return {"parameters": [], "policies": policies, "queues": queues, "exchanges": exchanges,
            "bindings": bindings}


def export_all(broker: Any) -> dict:
    state = broker.metadata.snapshot()
    out = _header()
    out["users"] = [{"name": u["name"], "password_hash": u.get("password_hash", ""),
                     "hashing_algorithm": u.get("hashing") or HASHING_SHA256,
                     "tags": list(u.get("tags", [])), "limits": {}}
                    for u in state.get("users", {}).values()]
    out["vhosts"] = [{"name": v["name"], "description": v.get("description", ""),
                      "tags": list(v.get("tags", [])),
                      "default_queue_type": v.get("default_queue_type", "classic"),
                      "metadata": {"description": v.get("description", ""),
                                   "tags": list(v.get("tags", [])),
                                   "default_queue_type": v.get("default_queue_type",
                                                               "classic")},
                      "limits": []}
                     for v in state.get("vhosts", {}).values()]
    out["permissions"] = [dict(p) for perms in state.get("permissions", {}).values()
                          for p in perms.values()]
    out["topic_permissions"] = []
    out["global_parameters"] = [{"name": "cluster_name", "value": broker.runtime.cluster_name}]
    merged: dict[str, list] = {"parameters": [], "policies": [], "queues": [], "exchanges": [],
                               "bindings": []}
    for vhost in state.get("vhosts", {}):
        for key, items in _vhost_items(state, vhost, keep_vhost=True).items():
            merged[key].extend(items)
    out.update(merged)
    return out


def export_vhost(broker: Any, vhost: str) -> dict:
    out = _header()
    out.update(_vhost_items(broker.metadata.snapshot(), vhost, keep_vhost=False))
    return out


# --- import --------------------------------------------------------------------------
class Importer:
    """Applies a definitions document item by item, through the broker (and Raft)."""

    def __init__(self, broker: Any, into_vhost: str | None = None) -> None:
        self.broker = broker
        self.into_vhost = into_vhost  # a single-vhost file: every item goes here

    def _vhost_of(self, item: dict) -> Any:
        vhost = self.into_vhost if self.into_vhost is not None else item.get("vhost")
        if not isinstance(vhost, str):
            raise bad_request(f"definition lacks a vhost: {json.dumps(item)[:200]}")
        vh = self.broker.runtime.vhosts.get(vhost)
        if vh is None:
            raise bad_request(f"vhost '{vhost}' does not exist")
        return vh

    async def run(self, doc: dict) -> None:
        b = self.broker
        if self.into_vhost is None:
            for u in _items(doc, "users"):
                await self.user(u)
            for v in _items(doc, "vhosts"):
                await self.vhost(v)
            for p in _items(doc, "permissions"):
                user = p.get("user")
                if p.get("vhost") in b.runtime.vhosts and isinstance(user, str) and \
                        b.runtime.records.user(user) is not None:
                    await b.definitions.set_permissions(p["user"], p["vhost"], p.get("configure", ""),
                                            p.get("write", ""), p.get("read", ""))
        for p in _items(doc, "policies"):
            vh = self._vhost_of(p)
            await b.definitions.set_policy(vh.name, str(p["name"]), str(p.get("pattern", "")),
                               p.get("definition") or {}, int(p.get("priority", 0)),
                               str(p.get("apply-to", p.get("apply_to", "all"))))
        for q in _items(doc, "queues"):
            await self.queue(q)
        for x in _items(doc, "exchanges"):
            await self.exchange(x)
        for bd in _items(doc, "bindings"):
            await self.binding(bd)

    async def user(self, u: dict) -> None:
        username = str(u["name"])
        if "password_hash" in u:
            pw_hash = str(u["password_hash"])
            hashing = str(u.get("hashing_algorithm") or HASHING_SHA256)
        elif "password" in u:
            pw_hash, hashing = hash_password(str(u["password"])), HASHING_SHA256
        else:
            pw_hash, hashing = "", HASHING_SHA256
        await self.broker.definitions.add_user(username, pw_hash, parse_tags(u.get("tags")), hashing)

    async def vhost(self, v: dict) -> None:
        raw_meta = v.get("metadata")
        meta: dict = raw_meta if isinstance(raw_meta, dict) else {}
        await self.broker.definitions.add_vhost(
            str(v["name"]), str(v.get("description", meta.get("description", "")) or ""),
            parse_tags(v.get("tags", meta.get("tags"))),
            str(v.get("default_queue_type", meta.get("default_queue_type", "classic"))
                or "classic"))

    async def queue(self, q: dict) -> None:
        vh = self._vhost_of(q)
        qname = str(q["name"])
        if qname in vh.queues:
            return  # immutable: the existing queue wins
        durable, auto_delete = bool(q.get("durable", True)), bool(q.get("auto_delete", False))
        args = types.with_default_type(q.get("arguments") or {},
                                       self.broker.definitions.default_queue_type(vh.name), durable, False,
                                       auto_delete)
        self.broker.definitions.validate_queue_arguments(args, qname, vh.name, durable, False, auto_delete)
        await self.broker.definitions.declare_queue(vh, qname, durable, None, auto_delete, args)

    async def exchange(self, x: dict) -> None:
        vh = self._vhost_of(x)
        xname = str(x["name"])
        if xname in vh.exchanges or _builtin(xname):
            return
        xtype = x.get("type")
        if xtype not in self.broker.runtime.exchange_types:
            raise bad_request(f"{resource_text('exchange', xname, vh.name)}: unknown exchange "
                              f"type '{xtype}'")
        await self.broker.definitions.declare_exchange(vh, xname, xtype, bool(x.get("durable", True)),
                                           bool(x.get("auto_delete", False)),
                                           bool(x.get("internal", False)),
                                           x.get("arguments") or {})

    async def binding(self, bd: dict) -> None:
        vh = self._vhost_of(bd)
        kind = bd.get("destination_type")
        if kind not in ("queue", "exchange"):
            raise bad_request(f"binding destination_type must be queue or exchange: {kind!r}")
        source, dest = str(bd["source"]), str(bd["destination"])
        if source not in vh.exchanges or (
                dest not in (vh.queues if kind == "queue" else vh.exchanges)):
            raise bad_request(f"binding {source} -> {kind} {dest} in vhost '{vh.name}': no "
                              "such source or destination")
        await self.broker.definitions.bind(vh, source, Destination(kind, dest),
                               str(bd.get("routing_key", "")), bd.get("arguments") or {})


def _items(doc: dict, key: str) -> list[dict]:
    items = doc.get(key) or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise bad_request(f"'{key}' must be a list of objects")
    return items


async def read_document(request: web.Request) -> dict:
    """The uploaded file: a JSON body, or a multipart form with a "file" field."""
    if request.content_type.startswith("multipart/"):
        form = await request.post()
        field = form.get("file")
        if field is None:
            raise bad_request("key missing: file")
        raw = field.file.read() if hasattr(field, "file") else str(field).encode()
    else:
        raw = await request.read()
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"invalid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise bad_request("a definitions file is a JSON object")
    return doc


async def _import(request: web.Request, into: str | None) -> web.Response:
    doc = await read_document(request)
    try:
        await Importer(broker_of(request), into).run(doc)
    except (KeyError, TypeError, ValueError) as e:
        raise bad_request(f"invalid definitions: {e!r}") from None
    except HTTPError:
        raise
    return web.Response(status=204)


@routes.get("/api/definitions")
async def get_definitions(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    return _download(request, json_response(export_all(broker_of(request))))


@routes.post("/api/definitions")
async def post_definitions(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    return await _import(request, None)


@routes.get("/api/definitions/{vhost}")
async def get_vhost_definitions(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    vhost = name(request, "vhost")
    if vhost not in broker_of(request).runtime.vhosts:
        raise not_found()
    return _download(request, json_response(export_vhost(broker_of(request), vhost)))


@routes.post("/api/definitions/{vhost}")
async def post_vhost_definitions(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    vhost = name(request, "vhost")
    if vhost not in broker_of(request).runtime.vhosts:
        raise not_found()
    return await _import(request, vhost)


def _download(request: web.Request, resp: web.Response) -> web.Response:
    # ?download=<file> as RabbitMQ's UI uses it: save instead of showing
    filename = request.query.get("download")
    if filename:
        safe = "".join(c for c in filename if c.isalnum() or c in "._-") or "definitions.json"
        resp.headers["Content-Disposition"] = f'attachment; filename="{safe}"'
    return resp
