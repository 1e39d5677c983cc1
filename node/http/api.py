"""The management HTTP API: RabbitMQ's paths and JSON shapes, HTTP basic auth, user tags.

Errors are JSON `{"error": ..., "reason": ...}` with RabbitMQ's status codes.  Every change
goes through the broker (and so through Raft for replicated definitions)."""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any, Awaitable, Callable
from urllib.parse import unquote

from aiohttp import web

from node.auth import check_password, hash_password, is_loopback
from node.broker import PRODUCT, VERSION, Broker
from node.errors import AMQPError

log = logging.getLogger("warren.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, error: str, reason: str) -> web.Response:
    return web.json_response({"error": error, "reason": reason}, status=status)


class HTTPError(Exception):
    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason = status, error, reason


def _name(request: web.Request, key: str) -> str:
    # vhost "/" arrives as %2F; aiohttp leaves it encoded inside one path segment
    return unquote(request.match_info[key])


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/api/") or request.path == "/api/openapi.json":
        return await handler(request)
    broker: Broker = request.app["broker"]
    header = request.headers.get("Authorization", "")
    user = None
    if header.startswith("Basic "):
        try:
            username, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            username, password = "", ""
        u = broker.users.get(username)
        if u is not None and check_password(password, u.get("password_hash", ""),
                                            u.get("hashing", "")):
            if (username == "guest" and broker.loopback_only_guest
                    and not is_loopback(request.remote)):
                return _error(401, "not_authorised", "guest user can only log in via localhost")
            user = u
    if user is None:
        resp = _error(401, "not_authorised", "Login failed")
        resp.headers["WWW-Authenticate"] = 'Basic realm="WarrenMQ Management"'
        return resp
    tags = set(user.get("tags", []))
    if not tags & {"administrator", "monitoring", "policymaker", "management"}:
        return _error(401, "not_authorised", "Not management user")
    request["user"] = user
    try:
        return await handler(request)
    except HTTPError as e:
        return _error(e.status, e.error, e.reason)
    except AMQPError as e:
        status = {404: 404, 403: 403, 406: 400, 405: 400}.get(e.code, 500)
        return _error(status, "bad_request" if status == 400 else
                      ("not_found" if status == 404 else "internal_error"), e.text)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        return _error(400, "bad_request", f"invalid request: {e}")


def _require(request: web.Request, *tags: str) -> None:
    have = set(request["user"].get("tags", []))
    if not have & set(tags):
        raise HTTPError(401, "not_authorised", "Not administrator user")


async def _body(request: web.Request) -> dict:
    if not request.can_read_body:
        return {}
    data = await request.json()
    if not isinstance(data, dict):
        raise HTTPError(400, "bad_request", "expected a JSON object")
    return data


def _json(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=lambda v: json.dumps(v, default=_default))


def _default(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray)):
        return v.decode("utf-8", "replace")
    return str(v)


def queue_json(broker: Broker, vhost: str, q: Any) -> dict:
    ready = q.message_count
    return {
        "name": q.name, "vhost": vhost, "durable": q.durable, "auto_delete": q.auto_delete,
        "exclusive": q.exclusive_owner is not None, "arguments": q.arguments,
        "type": "classic", "node": broker.settings.node_name, "state": "running",
        "messages": ready + q.unacked, "messages_ready": ready,
        "messages_unacknowledged": q.unacked, "consumers": q.consumer_count,
        "message_bytes_ready": q.ready_bytes,
        "message_stats": {"publish": q.stats_publish, "deliver_get": q.stats_deliver,
                          "ack": q.stats_ack, "redeliver": q.stats_redeliver},
    }


def exchange_json(vhost: str, ex: Any) -> dict:
    return {"name": ex.name, "vhost": vhost, "type": ex.type_name, "durable": ex.durable,
            "auto_delete": ex.auto_delete, "internal": ex.internal, "arguments": ex.arguments,
            "user_who_performed_action": ""}


def binding_json(vhost: str, b: Any) -> dict:
    return {"source": b.source, "vhost": vhost, "destination": b.destination.name,
            "destination_type": b.destination.kind, "routing_key": b.routing_key,
            "arguments": b.arguments, "properties_key": b.routing_key or "~"}


def user_json(u: dict) -> dict:
    return {"name": u["name"], "password_hash": u.get("password_hash", ""),
            "hashing_algorithm": u.get("hashing", ""), "tags": list(u.get("tags", [])),
            "limits": {}}


class ManagementAPI:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def routes(self) -> list[web.RouteDef]:
        r = web
        return [
            r.get("/api/overview", self.overview),
            r.get("/api/whoami", self.whoami),
            r.get("/api/nodes", self.nodes),
            r.get("/api/vhosts", self.list_vhosts),
            r.get("/api/vhosts/{vhost}", self.get_vhost),
            r.put("/api/vhosts/{vhost}", self.put_vhost),
            r.delete("/api/vhosts/{vhost}", self.delete_vhost),
            r.get("/api/users", self.list_users),
            r.get("/api/users/{user}", self.get_user),
            r.put("/api/users/{user}", self.put_user),
            r.delete("/api/users/{user}", self.delete_user),
            r.get("/api/permissions", self.list_permissions),
            r.get("/api/permissions/{vhost}/{user}", self.get_permission),
            r.put("/api/permissions/{vhost}/{user}", self.put_permission),
            r.delete("/api/permissions/{vhost}/{user}", self.delete_permission),
            r.get("/api/queues", self.list_queues),
            r.get("/api/queues/{vhost}", self.list_queues),
            r.get("/api/queues/{vhost}/{name}", self.get_queue),
            r.put("/api/queues/{vhost}/{name}", self.put_queue),
            r.delete("/api/queues/{vhost}/{name}", self.delete_queue),
            r.delete("/api/queues/{vhost}/{name}/contents", self.purge_queue),
            r.get("/api/exchanges", self.list_exchanges),
            r.get("/api/exchanges/{vhost}", self.list_exchanges),
            r.get("/api/exchanges/{vhost}/{name}", self.get_exchange),
            r.put("/api/exchanges/{vhost}/{name}", self.put_exchange),
            r.delete("/api/exchanges/{vhost}/{name}", self.delete_exchange),
            r.get("/api/bindings", self.list_bindings),
            r.get("/api/bindings/{vhost}", self.list_bindings),
            r.get("/api/connections", self.list_connections),
        ]

    def _vhost(self, name: str) -> Any:
        vh = self.broker.vhosts.get(name)
        if vh is None:
            raise HTTPError(404, "not_found", "Object Not Found")
        return vh

    def _vhosts(self, request: web.Request) -> list:
        if "vhost" in request.match_info:
            return [self._vhost(_name(request, "vhost"))]
        return list(self.broker.vhosts.values())

    # --- overview ------------------------------------------------------------------
    async def overview(self, request: web.Request) -> web.Response:
        b = self.broker
        queues = [q for vh in b.vhosts.values() for q in vh.queues.values()]
        ready = sum(q.message_count for q in queues)
        unacked = sum(q.unacked for q in queues)
        return _json({
            "management_version": VERSION, "rabbitmq_version": VERSION, "product_name": PRODUCT,
            "product_version": VERSION, "cluster_name": b.settings.node_name,
            "node": b.settings.node_name,
            "object_totals": {
                "connections": len(b.connections),
                "channels": sum(len(c.channels) for c in b.connections),
                "exchanges": sum(len(vh.exchanges) for vh in b.vhosts.values()),
                "queues": len(queues),
                "consumers": sum(q.consumer_count for q in queues)},
            "queue_totals": {"messages": ready + unacked, "messages_ready": ready,
                             "messages_unacknowledged": unacked},
            "message_stats": {"publish": b.published},
            "listeners": [{"node": b.settings.node_name, "protocol": "amqp",
                           "port": b.settings.amqp_port},
                          {"node": b.settings.node_name, "protocol": "http",
                           "port": b.settings.http_port}],
        })

    async def whoami(self, request: web.Request) -> web.Response:
        u = request["user"]
        return _json({"name": u["name"], "tags": list(u.get("tags", []))})

    async def nodes(self, request: web.Request) -> web.Response:
        b = self.broker
        status = b.metadata.status()
        return _json([{"name": b.settings.node_name, "running": True, "type": "disc",
                       "uptime": int((time.time() - b.started_at) * 1000),
                       "raft": status}])

    # --- vhosts --------------------------------------------------------------------
    def _vhost_json(self, vh: Any) -> dict:
        queues = vh.queues.values()
        ready = sum(q.message_count for q in queues)
        unacked = sum(q.unacked for q in queues)
        return {"name": vh.name, "description": "", "tags": [], "tracing": False,
                "default_queue_type": "classic", "messages": ready + unacked,
                "messages_ready": ready, "messages_unacknowledged": unacked,
                "cluster_state": {self.broker.settings.node_name: "running"}}

    async def list_vhosts(self, request: web.Request) -> web.Response:
        return _json([self._vhost_json(vh) for vh in self.broker.vhosts.values()])

    async def get_vhost(self, request: web.Request) -> web.Response:
        return _json(self._vhost_json(self._vhost(_name(request, "vhost"))))

    async def put_vhost(self, request: web.Request) -> web.Response:
        _require(request, "administrator")
        body = await _body(request)
        name = _name(request, "vhost")
        existed = name in self.broker.vhosts
        await self.broker.add_vhost(name, body.get("description", ""), body.get("tags", []),
                                    body.get("default_queue_type", "classic"))
        return web.Response(status=204 if existed else 201)

    async def delete_vhost(self, request: web.Request) -> web.Response:
        _require(request, "administrator")
        self._vhost(_name(request, "vhost"))
        await self.broker.delete_vhost(_name(request, "vhost"))
        return web.Response(status=204)

    # --- users ---------------------------------------------------------------------
    async def list_users(self, request: web.Request) -> web.Response:
        _require(request, "administrator")
        return _json([user_json(u) for u in self.broker.users.values()])

    async def get_user(self, request: web.Request) -> web.Response:
        _require(request, "administrator")
        u = self.broker.users.get(_name(request, "user"))
        if u is None:
            raise HTTPError(404, "not_found", "Object Not Found")
        return _json(user_json(u))

    async def put_user(self, request: web.Request) -> web.Response:
        _require(request, "administrator")
        body = await _body(request)
        name = _name(request, "user")
        tags = body.get("tags", [])
        if isinstance(tags, str):
            tags = [t for t in tags.replace(" ", ",").split(",") if t]
        if "password" in body:
            pw_hash = hash_password(str(body["password"]))
            hashing = "rabbit_password_hashing_sha256"
        elif "password_hash" in body:
            pw_hash = body["password_hash"]
            hashing = body.get("hashing_algorithm", "rabbit_password_hashing_sha256")
        else:
            existing = self.broker.users.get(name)
            if existing is None:
                raise HTTPError(400, "bad_request", "key missing: password or password_hash")
            pw_hash, hashing = existing["password_hash"], existing.get("hashing", "")
        existed = name in self.broker.users
        await self.broker.add_user(name, pw_hash, tags, hashing)
        return web.Response(status=204 if existed else 201)

    async def delete_user(self, request: web.Request) -> web.Response:
        _require(request, "administrator")
        name = _name(request, "user")
        if name not in self.broker.users:
            raise HTTPError(404, "not_found", "Object Not Found")
        await self.broker.delete_user(name)
        return web.Response(status=204)

    # --- permissions ---------------------------------------------------------------
    async def list_permissions(self, request: web.Request) -> web.Response:
        _require(request, "administrator")
        return _json([p for perms in self.broker.permissions.values() for p in perms.values()])

    async def get_permission(self, request: web.Request) -> web.Response:
        _require(request, "administrator")
        p = self.broker.permissions.get(_name(request, "vhost"), {}).get(_name(request, "user"))
        if p is None:
            raise HTTPError(404, "not_found", "Object Not Found")
        return _json(p)

    async def put_permission(self, request: web.Request) -> web.Response:
        _require(request, "administrator")
        body = await _body(request)
        vhost, user = _name(request, "vhost"), _name(request, "user")
        self._vhost(vhost)
        if user not in self.broker.users:
            raise HTTPError(400, "bad_request", f"user '{user}' does not exist")
        for key in ("configure", "write", "read"):
            if key not in body:
                raise HTTPError(400, "bad_request", f"key missing: {key}")
        await self.broker.set_permissions(user, vhost, body["configure"], body["write"],
                                          body["read"])
        return web.Response(status=201)

    async def delete_permission(self, request: web.Request) -> web.Response:
        _require(request, "administrator")
        await self.broker.clear_permissions(_name(request, "user"), _name(request, "vhost"))
        return web.Response(status=204)

    # --- queues --------------------------------------------------------------------
    async def list_queues(self, request: web.Request) -> web.Response:
        return _json([queue_json(self.broker, vh.name, q) for vh in self._vhosts(request)
                      for q in vh.queues.values()])

    def _queue(self, request: web.Request) -> tuple[Any, Any]:
        vh = self._vhost(_name(request, "vhost"))
        q = vh.queues.get(_name(request, "name"))
        if q is None:
            raise HTTPError(404, "not_found", "Object Not Found")
        return vh, q

    async def get_queue(self, request: web.Request) -> web.Response:
        vh, q = self._queue(request)
        return _json(queue_json(self.broker, vh.name, q))

    async def put_queue(self, request: web.Request) -> web.Response:
        body = await _body(request)
        vh = self._vhost(_name(request, "vhost"))
        name = _name(request, "name")
        args = body.get("arguments") or {}
        durable = bool(body.get("durable", True))
        auto_delete = bool(body.get("auto_delete", False))
        existing = vh.queues.get(name)
        if existing is not None:
            self.broker.check_queue_equivalent(existing, durable, False, auto_delete, args)
            return web.Response(status=204)
        self.broker.validate_queue_arguments(args)
        await self.broker.declare_queue(vh, name, durable, None, auto_delete, args)
        return web.Response(status=201)

    async def delete_queue(self, request: web.Request) -> web.Response:
        vh, q = self._queue(request)
        if request.query.get("if-unused") == "true" and q.consumers:
            raise HTTPError(400, "bad_request", "queue in use")
        if request.query.get("if-empty") == "true" and q.message_count:
            raise HTTPError(400, "bad_request", "queue not empty")
        await self.broker.delete_queue(vh, q)
        return web.Response(status=204)

    async def purge_queue(self, request: web.Request) -> web.Response:
        _vh, q = self._queue(request)
        q.purge()
        return web.Response(status=204)

    # --- exchanges -----------------------------------------------------------------
    async def list_exchanges(self, request: web.Request) -> web.Response:
        return _json([exchange_json(vh.name, ex) for vh in self._vhosts(request)
                      for ex in vh.exchanges.values()])

    async def get_exchange(self, request: web.Request) -> web.Response:
        vh = self._vhost(_name(request, "vhost"))
        ex = vh.exchanges.get(_name(request, "name"))
        if ex is None:
            raise HTTPError(404, "not_found", "Object Not Found")
        return _json(exchange_json(vh.name, ex))

    async def put_exchange(self, request: web.Request) -> web.Response:
        body = await _body(request)
        vh = self._vhost(_name(request, "vhost"))
        name = _name(request, "name")
        xtype = body.get("type")
        if xtype not in self.broker.exchange_types:
            raise HTTPError(400, "bad_request", f"unknown exchange type '{xtype}'")
        durable = bool(body.get("durable", True))
        auto_delete = bool(body.get("auto_delete", False))
        internal = bool(body.get("internal", False))
        args = body.get("arguments") or {}
        existing = vh.exchanges.get(name)
        if existing is not None:
            self.broker.check_exchange_equivalent(existing, xtype, durable, auto_delete,
                                                  internal, args)
            return web.Response(status=204)
        await self.broker.declare_exchange(vh, name, xtype, durable, auto_delete, internal, args)
        return web.Response(status=201)

    async def delete_exchange(self, request: web.Request) -> web.Response:
        vh = self._vhost(_name(request, "vhost"))
        name = _name(request, "name")
        if name not in vh.exchanges:
            raise HTTPError(404, "not_found", "Object Not Found")
        await self.broker.delete_exchange(vh, name, request.query.get("if-unused") == "true")
        return web.Response(status=204)

    # --- bindings, connections ----------------------------------------------------
    async def list_bindings(self, request: web.Request) -> web.Response:
        out = []
        for vh in self._vhosts(request):
            for q in vh.queues:  # the default exchange's implicit bindings, as RabbitMQ lists
                out.append({"source": "", "vhost": vh.name, "destination": q,
                            "destination_type": "queue", "routing_key": q, "arguments": {},
                            "properties_key": q})
            out.extend(binding_json(vh.name, b) for b in vh.bindings() if b.source != "")
        return _json(out)

    async def list_connections(self, request: web.Request) -> web.Response:
        out = []
        for c in self.broker.connections:
            out.append({"name": c.name, "node": self.broker.settings.node_name,
                        "user": c.user, "vhost": c.vhost.name if c.vhost else None,
                        "channels": len(c.channels), "peer_host": c.peer[0],
                        "peer_port": c.peer[1], "state": "running",
                        "client_properties": c.client_properties,
                        "connected_at": int(c.connected_at * 1000),
                        "frame_max": c.frame_max, "timeout": c.heartbeat,
                        "recv_oct": c.recv_bytes, "protocol": "AMQP 0-9-1"})
        return _json(out)


async def start_http(broker: Broker, host: str, port: int) -> web.AppRunner:
    app = web.Application(middlewares=[auth_middleware])
    app["broker"] = broker
    app.add_routes(ManagementAPI(broker).routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner
