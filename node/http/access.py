"""/api/vhosts, /api/users, /api/permissions, /api/policies: who may do what, where.

Every change goes through the broker's definition operations, so through Raft."""

from __future__ import annotations

from aiohttp import web

from node.auth import HASHING_SHA256, hash_password
from node.http.api_conventions import (
    ADMINISTRATOR,
    POLICYMAKER,
    bad_request,
    body,
    broker_of,
    created_or_updated,
    json_response,
    list_response,
    name,
    no_content,
    not_found,
    parse_tags,
    require,
    stats_of,
    vhost_or_404,
    visible_vhosts,
)
from node.http.rabbitmq_json import permission_json, policy_json, user_json, vhost_json
from node.runtime.records import PolicyRecord, UserRecord

routes = web.RouteTableDef()

APPLY_TO = ("all", "queues", "exchanges", "classic_queues", "quorum_queues", "streams")


# --- vhosts ------------------------------------------------------------------------
@routes.get("/api/vhosts")
async def list_vhosts(request: web.Request) -> web.Response:
    b, stats = broker_of(request), stats_of(request)
    return list_response(request, [vhost_json(b, stats, vh, b.runtime.records.vhost(vh.name))
                                   for vh in visible_vhosts(request)])


@routes.get("/api/vhosts/{vhost}")
async def get_vhost(request: web.Request) -> web.Response:
    vh = visible_vhosts(request)[0]
    b = broker_of(request)
    return json_response(vhost_json(b, stats_of(request), vh, b.runtime.records.vhost(vh.name)))


@routes.put("/api/vhosts/{vhost}")
async def put_vhost(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    data = await body(request)
    vhost = name(request, "vhost")
    b = broker_of(request)
    existed = vhost in b.runtime.vhosts
    raw_meta = data.get("metadata")
    meta: dict = raw_meta if isinstance(raw_meta, dict) else {}
    await b.definitions.add_vhost(vhost, str(data.get("description", meta.get("description", ""))),
                      parse_tags(data.get("tags", meta.get("tags"))),
                      str(data.get("default_queue_type",
                                   meta.get("default_queue_type", "classic"))))
    return created_or_updated(existed)


@routes.delete("/api/vhosts/{vhost}")
async def delete_vhost(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    vh = vhost_or_404(request)
    stats_of(request).sample()  # keep the vhost's last counts in the node's totals
    await broker_of(request).definitions.delete_vhost(vh.name)
    return no_content()


@routes.get("/api/vhosts/{vhost}/permissions")
async def vhost_permissions(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    vh = vhost_or_404(request)
    return list_response(request, [permission_json(p) for p in
                                   broker_of(request).runtime.records.permissions(vh.name)])


# --- users ---------------------------------------------------------------------------
@routes.get("/api/users")
async def list_users(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    return list_response(request, [user_json(u) for u in broker_of(request).runtime.records.users()])


@routes.get("/api/users/without-permissions")
async def users_without_permissions(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    records = broker_of(request).runtime.records
    with_perms = {p.user for p in records.permissions()}
    return list_response(request, [user_json(u) for u in records.users()
                                   if u.name not in with_perms])


def _user(request: web.Request) -> UserRecord:
    u = broker_of(request).runtime.records.user(name(request, "user"))
    if u is None:
        raise not_found()
    return u


@routes.get("/api/users/{user}")
async def get_user(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    return json_response(user_json(_user(request)))


@routes.put("/api/users/{user}")
async def put_user(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    data = await body(request)
    username = name(request, "user")
    b = broker_of(request)
    existing = b.runtime.records.user(username)
    if "tags" in data:
        tags = parse_tags(data["tags"])
    elif existing is None:
        raise bad_request("key missing: tags")
    else:
        tags = list(existing.tags)
    if "password" in data:
        pw_hash, hashing = hash_password(str(data["password"])), HASHING_SHA256
    elif "password_hash" in data:
        pw_hash = str(data["password_hash"])
        hashing = str(data.get("hashing_algorithm") or HASHING_SHA256)
    elif existing is not None:
        pw_hash, hashing = existing.password_hash, existing.hashing
    else:
        raise bad_request("key missing: password or password_hash")
    await b.definitions.add_user(username, pw_hash, tags, hashing)
    return created_or_updated(existing is not None)


@routes.delete("/api/users/{user}")
async def delete_user(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    await broker_of(request).definitions.delete_user(_user(request).name)
    return no_content()


@routes.post("/api/users/bulk-delete")
async def bulk_delete_users(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    data = await body(request, "users")
    b = broker_of(request)
    for username in data["users"]:
        if b.runtime.records.user(username) is not None:
            await b.definitions.delete_user(username)
    return no_content()


@routes.get("/api/users/{user}/permissions")
async def user_permissions(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    u = _user(request)
    return list_response(request, [permission_json(p) for p in
                                   broker_of(request).runtime.records.permissions(user=u.name)])


# --- permissions ---------------------------------------------------------------------
@routes.get("/api/permissions")
async def list_permissions(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    return list_response(request, [permission_json(p) for p in
                                   broker_of(request).runtime.records.permissions()])


@routes.get("/api/permissions/{vhost}/{user}")
async def get_permission(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    p = broker_of(request).runtime.records.permission(name(request, "vhost"),
                                                      name(request, "user"))
    if p is None:
        raise not_found()
    return json_response(permission_json(p))


@routes.put("/api/permissions/{vhost}/{user}")
async def put_permission(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    data = await body(request, "configure", "write", "read")
    vh = vhost_or_404(request)
    user = name(request, "user")
    b = broker_of(request)
    if b.runtime.records.user(user) is None:
        raise bad_request(f"user '{user}' does not exist")
    existed = b.runtime.records.permission(vh.name, user) is not None
    await b.definitions.set_permissions(user, vh.name, str(data["configure"]), str(data["write"]),
                            str(data["read"]))
    return created_or_updated(existed)


@routes.delete("/api/permissions/{vhost}/{user}")
async def delete_permission(request: web.Request) -> web.Response:
    require(request, ADMINISTRATOR)
    vhost, user = name(request, "vhost"), name(request, "user")
    b = broker_of(request)
    if b.runtime.records.permission(vhost, user) is None:
        raise not_found()
    await b.definitions.clear_permissions(user, vhost)
    return no_content()


# --- policies ------------------------------------------------------------------------
def _policy_vhosts(request: web.Request) -> list:
    require(request, POLICYMAKER)
    return visible_vhosts(request)


@routes.get("/api/policies")
@routes.get("/api/policies/{vhost}")
async def list_policies(request: web.Request) -> web.Response:
    records = broker_of(request).runtime.records
    return list_response(request, [policy_json(p) for vh in _policy_vhosts(request)
                                   for p in records.policies(vh.name)])


def _policy(request: web.Request) -> PolicyRecord:
    vh = _policy_vhosts(request)[0]
    p = broker_of(request).runtime.records.policy(vh.name, name(request, "name"))
    if p is None:
        raise not_found()
    return p


@routes.get("/api/policies/{vhost}/{name}")
async def get_policy(request: web.Request) -> web.Response:
    return json_response(policy_json(_policy(request)))


@routes.put("/api/policies/{vhost}/{name}")
async def put_policy(request: web.Request) -> web.Response:
    vh = _policy_vhosts(request)[0]
    data = await body(request, "pattern", "definition")
    policy_name = name(request, "name")
    definition = data["definition"]
    if not isinstance(definition, dict):
        raise bad_request("'definition' must be a JSON object")
    apply_to = str(data.get("apply-to", data.get("apply_to", "all")))
    if apply_to not in APPLY_TO:
        raise bad_request(f"'apply-to' must be one of {', '.join(APPLY_TO)}")
    try:
        priority = int(data.get("priority", 0))
    except (TypeError, ValueError):
        raise bad_request("'priority' must be an integer") from None
    b = broker_of(request)
    existed = b.runtime.records.policy(vh.name, policy_name) is not None
    await b.definitions.set_policy(vh.name, policy_name, str(data["pattern"]), definition, priority,
                       apply_to)
    return created_or_updated(existed)


@routes.delete("/api/policies/{vhost}/{name}")
async def delete_policy(request: web.Request) -> web.Response:
    p = _policy(request)
    await broker_of(request).definitions.clear_policy(p.vhost, p.name)
    return no_content()

