"""The management HTTP API against a real node: RabbitMQ's paths, JSON keys (as listed in
RabbitMQ's HTTP API reference and returned by RabbitMQ 3.13), status codes and errors."""

from __future__ import annotations

import time
from urllib.parse import quote

import pika
import pytest
import requests

GUEST = ("guest", "guest")


class Api:
    """A tiny client: paths are given with %2F already where a vhost is "/"."""

    def __init__(self, base: str, auth: tuple[str, str] = GUEST) -> None:
        self.base, self.auth = base, auth

    def __call__(self, method: str, path: str, json: object = None, **kw) -> requests.Response:
        return requests.request(method, self.base + path, json=json, auth=self.auth,
                                timeout=30, **kw)

    def get(self, path: str, **kw) -> object:
        r = self("GET", path, **kw)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()


def q(name: str) -> str:
    return quote(name, safe="")


@pytest.fixture(scope="module")
def api(node) -> Api:
    return Api(node.http_url)


def assert_keys(obj: dict, keys: set[str]) -> None:
    missing = keys - set(obj)
    assert not missing, f"missing keys {sorted(missing)} in {sorted(obj)}"


# RabbitMQ's keys for each object (3.13 responses); we must have at least these
OVERVIEW_KEYS = {"management_version", "rates_mode", "exchange_types", "product_version",
                 "product_name", "rabbitmq_version", "cluster_name", "erlang_version",
                 "message_stats", "queue_totals", "object_totals", "node", "listeners",
                 "contexts", "statistics_db_node", "sample_retention_policies"}
QUEUE_KEYS = {"name", "vhost", "durable", "auto_delete", "exclusive", "arguments", "type",
              "node", "state", "messages", "messages_ready", "messages_unacknowledged",
              "messages_details", "messages_ready_details", "messages_unacknowledged_details",
              "consumers", "policy", "message_bytes",
              "message_bytes_ready", "message_stats", "effective_policy_definition",
              "exclusive_consumer_tag", "head_message_timestamp"}
# consumer_utilisation and memory are not measured here, and idle_since only while the
# sampler sees a queue idle: left out rather than shown as constants
EXCHANGE_KEYS = {"name", "vhost", "type", "durable", "auto_delete", "internal", "arguments",
                 "user_who_performed_action"}
BINDING_KEYS = {"source", "vhost", "destination", "destination_type", "routing_key",
                "arguments", "properties_key"}
CONNECTION_KEYS = {"name", "node", "user", "vhost", "channels", "peer_host", "peer_port",
                   "host", "port", "state", "protocol", "client_properties", "connected_at",
                   "frame_max", "channel_max", "timeout", "recv_oct", "recv_oct_details",
                   "send_oct", "send_oct_details", "ssl", "type", "auth_mechanism",
                   "user_provided_name"}
CHANNEL_KEYS = {"name", "number", "node", "user", "vhost", "connection_details", "state",
                "consumer_count", "messages_unacknowledged", "messages_unconfirmed",
                "messages_uncommitted", "acks_uncommitted", "prefetch_count",
                "global_prefetch_count", "confirm", "transactional", "message_stats"}
CONSUMER_KEYS = {"consumer_tag", "queue", "channel_details", "ack_required", "exclusive",
                 "prefetch_count", "arguments", "active", "activity_status"}
NODE_KEYS = {"name", "type", "running", "mem_used", "mem_limit", "mem_alarm", "disk_free",
             "disk_free_limit", "disk_free_alarm", "fd_used", "fd_total", "sockets_used",
             "sockets_total", "uptime", "processors", "exchange_types", "os_pid",
             "being_drained", "rates_mode"}
VHOST_KEYS = {"name", "description", "tags", "default_queue_type", "metadata", "tracing",
              "cluster_state", "messages", "messages_ready", "messages_unacknowledged",
              "message_stats"}


# --- overview, nodes, whoami, health ------------------------------------------------------
def test_overview_shape(api):
    o = api.get("/api/overview")
    assert_keys(o, OVERVIEW_KEYS)
    assert_keys(o["object_totals"], {"connections", "channels", "exchanges", "queues",
                                     "consumers"})
    assert_keys(o["queue_totals"], {"messages", "messages_ready", "messages_unacknowledged"})
    assert_keys(o["message_stats"], {"publish", "publish_details", "deliver_get",
                                     "deliver_get_details", "ack", "ack_details",
                                     "redeliver", "confirm", "return_unroutable"})
    assert isinstance(o["message_stats"]["publish_details"]["rate"], float)
    assert {x["name"] for x in o["exchange_types"]} >= {"direct", "fanout", "topic", "headers"}
    assert {x["protocol"] for x in o["listeners"]} >= {"amqp"}


def test_nodes_whoami_cluster_name(api, node):
    nodes = api.get("/api/nodes")
    assert len(nodes) == 1
    assert_keys(nodes[0], NODE_KEYS)
    assert nodes[0]["name"] == node.name and nodes[0]["running"] is True
    assert api.get(f"/api/nodes/{q(node.name)}")["name"] == node.name
    assert api("GET", "/api/nodes/nobody@nowhere").status_code == 404
    assert api.get("/api/whoami") == {"name": "guest", "tags": ["administrator"]}
    assert api.get("/api/cluster-name")["name"]


def test_health_checks_and_aliveness(api):
    for path in ("/api/health/checks/alarms", "/api/health/checks/local-alarms"):
        r = api("GET", path)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert api.get("/api/aliveness-test/%2F") == {"status": "ok"}
    assert api("GET", "/api/aliveness-test/nope").status_code == 404


# --- errors, auth -----------------------------------------------------------------------
def test_auth_required_and_errors(api, node):
    r = requests.get(node.http_url + "/api/overview", timeout=10)
    assert r.status_code == 401
    assert r.json()["error"] == "not_authorised"
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    r = requests.get(node.http_url + "/api/overview", auth=("guest", "wrong"), timeout=10)
    assert r.status_code == 401 and r.json() == {"error": "not_authorised",
                                                 "reason": "Login failed"}
    r = api("GET", "/api/queues/%2F/no-such-queue")
    assert r.status_code == 404 and set(r.json()) == {"error", "reason"}
    r = api("GET", "/api/queues/no-such-vhost")
    assert r.status_code == 404
    r = api("DELETE", "/api/overview")
    assert r.status_code == 405 and set(r.json()) == {"error", "reason"}
    r = api("PUT", "/api/queues/%2F/bad", data=b"{not json",
            headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    r = api("PUT", "/api/permissions/%2F/guest", json={"configure": ".*"})
    assert r.status_code == 400 and "key missing" in r.json()["reason"]
    r = api("PUT", "/api/exchanges/%2F/x-no-type", json={"durable": True})
    assert r.status_code == 400 and r.json()["reason"] == "key missing: type"
    r = api("PUT", "/api/exchanges/%2F/x-bad-type", json={"type": "nonsense"})
    assert r.status_code == 400


def test_user_tags_limit_what_a_user_sees(api, node):
    assert api("PUT", "/api/users/mgmt-only", json={"password": "pw",
                                                    "tags": "management"}).status_code == 201
    assert api("PUT", "/api/users/nobody-tag", json={"password": "pw",
                                                     "tags": ""}).status_code == 201
    assert api("PUT", "/api/vhosts/tags-vh", json={}).status_code == 201
    try:
        mgmt = Api(node.http_url, ("mgmt-only", "pw"))
        assert mgmt("GET", "/api/users").status_code == 401  # administrator only
        assert mgmt("GET", "/api/nodes").status_code == 401  # monitoring and up
        assert mgmt.get("/api/vhosts") == []  # no permissions anywhere yet
        assert mgmt("GET", "/api/queues/tags-vh").status_code == 401
        api("PUT", "/api/permissions/tags-vh/mgmt-only",
            json={"configure": "^mine", "write": ".*", "read": ".*"})
        assert [v["name"] for v in mgmt.get("/api/vhosts")] == ["tags-vh"]
        assert mgmt("PUT", "/api/queues/tags-vh/mine.q", json={}).status_code == 201
        r = mgmt("PUT", "/api/queues/tags-vh/theirs.q", json={})
        assert r.status_code == 401 and "ACCESS_REFUSED" in r.json()["reason"]
        r = Api(node.http_url, ("nobody-tag", "pw"))("GET", "/api/overview")
        assert r.status_code == 401 and r.json()["reason"] == "Not management user"
    finally:
        api("DELETE", "/api/vhosts/tags-vh")
        api("DELETE", "/api/users/mgmt-only")
        api("DELETE", "/api/users/nobody-tag")


# --- vhosts, users, permissions ----------------------------------------------------------
def test_vhost_user_permission_crud(api):
    assert api("PUT", "/api/vhosts/crud-vh", json={"description": "testing",
                                                   "tags": "a,b"}).status_code == 201
    assert api("PUT", "/api/vhosts/crud-vh", json={"description": "again"}).status_code == 204
    vh = api.get("/api/vhosts/crud-vh")
    assert_keys(vh, VHOST_KEYS)
    assert vh["description"] == "again"
    assert api("PUT", "/api/users/crud-user", json={"password": "pw",
                                                    "tags": ["monitoring"]}).status_code == 201
    u = api.get("/api/users/crud-user")
    assert set(u) >= {"name", "password_hash", "hashing_algorithm", "tags", "limits"}
    assert u["tags"] == ["monitoring"]
    assert u["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert api("PUT", "/api/users/crud-user2", json={"tags": ""}).status_code == 400
    perm = {"configure": "^c", "write": "^w", "read": "^r"}
    assert api("PUT", "/api/permissions/crud-vh/crud-user", json=perm).status_code == 201
    assert api.get("/api/permissions/crud-vh/crud-user") == {
        "user": "crud-user", "vhost": "crud-vh", **perm}
    assert {"user": "crud-user", "vhost": "crud-vh", **perm} in api.get("/api/permissions")
    # as in RabbitMQ, creating a vhost grants nobody (not even its creator) access to it
    assert [p["user"] for p in api.get("/api/vhosts/crud-vh/permissions")] == ["crud-user"]
    assert api("PUT", "/api/permissions/crud-vh/ghost", json=perm).status_code == 400
    r = api("PUT", "/api/permissions/crud-vh/crud-user", json={**perm, "read": "(unclosed"})
    assert r.status_code == 400
    assert api("DELETE", "/api/permissions/crud-vh/crud-user").status_code == 204
    assert api("GET", "/api/permissions/crud-vh/crud-user").status_code == 404
    assert "crud-user" in [u["name"] for u in api.get("/api/users/without-permissions")]
    assert api("DELETE", "/api/users/crud-user").status_code == 204
    assert api("DELETE", "/api/users/crud-user").status_code == 404
    assert api("DELETE", "/api/vhosts/crud-vh").status_code == 204
    assert api("GET", "/api/vhosts/crud-vh").status_code == 404


# --- queues, exchanges, bindings, messages ---------------------------------------------
def test_queue_declare_publish_get_purge_delete(api):
    assert api("PUT", "/api/queues/%2F/api-q", json={"durable": True,
                                                     "arguments": {"x-max-length": 50}}
               ).status_code == 201
    assert api("PUT", "/api/queues/%2F/api-q", json={"durable": True,
                                                     "arguments": {"x-max-length": 50}}
               ).status_code == 204
    r = api("PUT", "/api/queues/%2F/api-q", json={"durable": False})
    assert r.status_code == 400 and "inequivalent arg 'durable'" in r.json()["reason"]
    qd = api.get("/api/queues/%2F/api-q")
    assert_keys(qd, QUEUE_KEYS)
    assert qd["arguments"] == {"x-max-length": 50} and qd["durable"] is True
    for i in range(3):
        r = api("POST", "/api/exchanges/%2F/amq.default/publish", json={
            "properties": {"delivery_mode": 2, "headers": {"n": i}, "content_type": "text/plain"},
            "routing_key": "api-q", "payload": f"m{i}", "payload_encoding": "string"})
        assert r.status_code == 200 and r.json() == {"routed": True}
    r = api("POST", "/api/exchanges/%2F/amq.default/publish", json={
        "properties": {}, "routing_key": "nowhere", "payload": "x",
        "payload_encoding": "string"})
    assert r.json() == {"routed": False}
    r = api("POST", "/api/exchanges/%2F/amq.default/publish", json={"routing_key": "api-q"})
    assert r.status_code == 400 and "key missing" in r.json()["reason"]
    got = api("POST", "/api/queues/%2F/api-q/get", json={
        "count": 2, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 50000})
    assert got.status_code == 200
    msgs = got.json()
    assert [m["payload"] for m in msgs] == ["m0", "m1"]
    assert set(msgs[0]) >= {"payload_bytes", "redelivered", "exchange", "routing_key",
                            "message_count", "properties", "payload", "payload_encoding"}
    assert msgs[0]["properties"]["headers"] == {"n": 0}
    assert msgs[0]["properties"]["delivery_mode"] == 2
    assert msgs[0]["message_count"] == 2 and msgs[0]["payload_encoding"] == "string"
    # requeued in place: the same messages come back first, now redelivered
    again = api("POST", "/api/queues/%2F/api-q/get", json={
        "count": 1, "ackmode": "ack_requeue_false", "encoding": "base64"}).json()
    assert again[0]["payload"] == "bTA=" and again[0]["redelivered"] is True
    assert again[0]["payload_encoding"] == "base64"
    assert api.get("/api/queues/%2F/api-q")["messages"] == 2
    r = api("POST", "/api/queues/%2F/api-q/get", json={"count": 1, "ackmode": "nope",
                                                       "encoding": "auto"})
    assert r.status_code == 400
    assert api("DELETE", "/api/queues/%2F/api-q?if-empty=true").status_code == 400
    assert api("DELETE", "/api/queues/%2F/api-q/contents").status_code == 204
    assert api.get("/api/queues/%2F/api-q")["messages"] == 0
    assert api("DELETE", "/api/queues/%2F/api-q").status_code == 204
    assert api("GET", "/api/queues/%2F/api-q").status_code == 404


def test_exchanges_and_bindings(api):
    assert api("PUT", "/api/exchanges/%2F/api-x", json={"type": "topic",
                                                        "durable": True}).status_code == 201
    assert api("PUT", "/api/exchanges/%2F/api-x2", json={"type": "fanout"}).status_code == 201
    api("PUT", "/api/queues/%2F/api-bq", json={"durable": True})
    x = api.get("/api/exchanges/%2F/api-x")
    assert_keys(x, EXCHANGE_KEYS)
    assert x["type"] == "topic"
    assert api("PUT", "/api/exchanges/%2F/amq.nope", json={"type": "direct"}).status_code == 400
    r = api("POST", "/api/bindings/%2F/e/api-x/q/api-bq", json={"routing_key": "a.*",
                                                                "arguments": {}})
    assert r.status_code == 201 and r.headers["Location"] == "a.%2A"
    r = api("POST", "/api/bindings/%2F/e/api-x/e/api-x2", json={"routing_key": "b.#"})
    assert r.status_code == 201
    pair = api.get("/api/bindings/%2F/e/api-x/q/api-bq")
    assert len(pair) == 1
    assert_keys(pair[0], BINDING_KEYS)
    assert pair[0]["properties_key"] == "a.%2A"
    assert api.get("/api/bindings/%2F/e/api-x/q/api-bq/a.%252A")["routing_key"] == "a.*"
    listed = api.get("/api/bindings/%2F")
    assert {"source": "", "destination": "api-bq", "routing_key": "api-bq"}.items() <= next(
        b for b in listed if b["destination"] == "api-bq" and b["source"] == "").items()
    assert any(b["source"] == "api-x" and b["destination"] == "api-x2"
               and b["destination_type"] == "exchange" for b in listed)
    assert sorted(b["destination"] for b in api.get(
        "/api/exchanges/%2F/api-x/bindings/source")) == ["api-bq", "api-x2"]
    assert [b["source"] for b in api.get("/api/queues/%2F/api-bq/bindings")] == ["", "api-x"]
    r = api("POST", "/api/exchanges/%2F/api-x/publish", json={
        "properties": {}, "routing_key": "a.b", "payload": "aGk=", "payload_encoding": "base64"})
    assert r.json() == {"routed": True}
    x = api.get("/api/exchanges/%2F/api-x")
    assert x["message_stats"]["publish_in"] == 1 and x["message_stats"]["publish_out"] == 1
    assert api("POST", "/api/bindings/%2F/e/api-x/q/no-such-q", json={}).status_code == 404
    assert api("DELETE", "/api/bindings/%2F/e/api-x/q/api-bq/a.%252A").status_code == 204
    assert api.get("/api/bindings/%2F/e/api-x/q/api-bq") == []
    assert api("DELETE", "/api/bindings/%2F/e/api-x/e/api-x2/b.%2523").status_code == 204
    assert api("DELETE", "/api/exchanges/%2F/amq.direct").status_code == 400
    assert api("DELETE", "/api/exchanges/%2F/api-x").status_code == 204
    assert api("DELETE", "/api/exchanges/%2F/api-x2").status_code == 204
    assert api("DELETE", "/api/queues/%2F/api-bq").status_code == 204


def test_lists_support_sort_columns_and_pagination(api):
    for n in ("page-c", "page-a", "page-b"):
        api("PUT", f"/api/queues/%2F/{n}", json={"durable": False})
    try:
        rows = api.get("/api/queues/%2F", params={"sort": "name", "columns": "name,messages",
                                                 "name": "page-"})
        assert rows == [{"name": "page-a", "messages": 0}, {"name": "page-b", "messages": 0},
                        {"name": "page-c", "messages": 0}]
        page = api.get("/api/queues/%2F", params={"page": 2, "page_size": 2, "name": "^page-",
                                                 "use_regex": "true", "sort": "name",
                                                 "sort_reverse": "true"})
        assert set(page) == {"filtered_count", "item_count", "items", "page", "page_count",
                             "page_size", "total_count"}
        assert page["filtered_count"] == 3 and page["page_count"] == 2
        assert [i["name"] for i in page["items"]] == ["page-a"]
    finally:
        for n in ("page-a", "page-b", "page-c"):
            api("DELETE", f"/api/queues/%2F/{n}")


# --- connections, channels, consumers --------------------------------------------------
def test_connections_channels_consumers_and_forced_close(api, node):
    params = pika.URLParameters(node.url)
    params.client_properties = {"connection_name": "mgmt-test-conn"}
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_qos(prefetch_count=7)
    ch.queue_declare("conn-q", exclusive=True)
    ch.basic_consume("conn-q", lambda *a: None, consumer_tag="ctag-1")
    try:
        conns = [c for c in api.get("/api/connections")
                 if c["client_properties"].get("connection_name") == "mgmt-test-conn"]
        assert len(conns) == 1
        c = conns[0]
        assert_keys(c, CONNECTION_KEYS)
        assert c["user"] == "guest" and c["vhost"] == "/" and c["channels"] == 1
        assert c["protocol"] == "AMQP 0-9-1" and c["user_provided_name"] == "mgmt-test-conn"
        assert c["recv_oct"] > 0 and c["send_oct"] > 0
        assert api.get(f"/api/connections/{q(c['name'])}")["name"] == c["name"]
        assert c["name"] in [x["name"] for x in api.get("/api/vhosts/%2F/connections")]
        chans = [x for x in api.get("/api/channels")
                 if x["connection_details"]["name"] == c["name"]]
        assert len(chans) == 1
        assert_keys(chans[0], CHANNEL_KEYS)
        assert chans[0]["confirm"] is True and chans[0]["prefetch_count"] == 7
        assert chans[0]["consumer_count"] == 1
        assert api.get(f"/api/channels/{q(chans[0]['name'])}")["number"] == chans[0]["number"]
        consumers = [x for x in api.get("/api/consumers/%2F") if x["consumer_tag"] == "ctag-1"]
        assert len(consumers) == 1
        assert_keys(consumers[0], CONSUMER_KEYS)
        assert consumers[0]["queue"] == {"name": "conn-q", "vhost": "/"}
        assert consumers[0]["prefetch_count"] == 7
        assert consumers[0]["channel_details"]["connection_name"] == c["name"]
        qd = api.get("/api/queues/%2F/conn-q")
        assert qd["exclusive"] is True and qd["consumers"] == 1

        assert api("DELETE", f"/api/connections/{q(c['name'])}").status_code == 204
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
            conn.process_data_events(time_limit=5)
            conn.process_data_events(time_limit=5)
        assert e.value.reply_code == 320
        assert e.value.reply_text == "CONNECTION_FORCED - Closed via management plugin"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
                x["name"] == c["name"] for x in api.get("/api/connections")):
            time.sleep(0.05)
        assert api("GET", f"/api/connections/{q(c['name'])}").status_code == 404
        assert api("GET", "/api/queues/%2F/conn-q").status_code == 404  # exclusive: gone
    finally:
        if conn.is_open:
            conn.close()


# --- policies ----------------------------------------------------------------------------
def test_policies(api):
    r = api("PUT", "/api/policies/%2F/ttl-all", json={
        "pattern": "^pol\\.", "definition": {"message-ttl": 60000}, "priority": 3,
        "apply-to": "queues"})
    assert r.status_code == 201
    assert api("PUT", "/api/policies/%2F/ttl-all", json={
        "pattern": "^pol\\.", "definition": {"message-ttl": 30000}, "priority": 3,
        "apply-to": "queues"}).status_code == 204
    p = api.get("/api/policies/%2F/ttl-all")
    assert p == {"vhost": "/", "name": "ttl-all", "pattern": "^pol\\.", "apply-to": "queues",
                 "definition": {"message-ttl": 30000}, "priority": 3}
    assert p in api.get("/api/policies") and p in api.get("/api/policies/%2F")
    api("PUT", "/api/queues/%2F/pol.q", json={"durable": False})
    qd = api.get("/api/queues/%2F/pol.q")
    assert qd["policy"] == "ttl-all"
    assert qd["effective_policy_definition"] == {"message-ttl": 30000}
    api("DELETE", "/api/queues/%2F/pol.q")
    assert api("PUT", "/api/policies/%2F/bad", json={"pattern": "x"}).status_code == 400
    assert api("PUT", "/api/policies/%2F/bad", json={
        "pattern": "x", "definition": {}, "apply-to": "everything"}).status_code == 400
    assert api("DELETE", "/api/policies/%2F/ttl-all").status_code == 204
    assert api("GET", "/api/policies/%2F/ttl-all").status_code == 404
    assert api("DELETE", "/api/policies/%2F/ttl-all").status_code == 404


# --- OpenAPI -------------------------------------------------------------------------------
def test_openapi_describes_the_api(node):
    r = requests.get(node.http_url + "/api/openapi.json", timeout=10)  # no auth
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for path, method in (("/api/overview", "get"), ("/api/queues/{vhost}/{name}", "put"),
                         ("/api/connections/{name}", "delete"),
                         ("/api/bindings/{vhost}/e/{source}/{kind}/{destination}", "post"),
                         ("/api/exchanges/{vhost}/{name}/publish", "post"),
                         ("/api/definitions", "post"), ("/api/policies/{vhost}/{name}", "put")):
        assert method in paths[path], path
    assert doc["components"]["securitySchemes"]["basicAuth"]["scheme"] == "basic"


def test_publish_refused_by_queue_limits_and_get_rejects_to_dead_letters(api):
    api("PUT", "/api/queues/%2F/lim-dlq", json={"durable": False})
    assert api("PUT", "/api/queues/%2F/lim-q", json={"durable": False, "arguments": {
        "x-max-length": 1, "x-overflow": "reject-publish", "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "lim-dlq"}}).status_code == 201
    try:
        def publish(payload: str) -> requests.Response:
            return api("POST", "/api/exchanges/%2F/amq.default/publish", json={
                "properties": {}, "routing_key": "lim-q", "payload": payload,
                "payload_encoding": "string"})
        assert publish("first").json() == {"routed": True}
        r = publish("second")  # RabbitMQ answers a nacked publish with 400
        assert r.status_code == 400
        assert r.json()["reason"] == "Unable to publish message. Check queue limits."
        got = api("POST", "/api/queues/%2F/lim-q/get", json={
            "count": 1, "ackmode": "reject_requeue_false", "encoding": "auto"}).json()
        assert [m["payload"] for m in got] == ["first"]
        dead = api("POST", "/api/queues/%2F/lim-dlq/get", json={
            "count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"}).json()
        assert [m["payload"] for m in dead] == ["first"]
        assert dead[0]["properties"]["headers"]["x-death"][0]["reason"] == "rejected"
    finally:
        api("DELETE", "/api/queues/%2F/lim-q")
        api("DELETE", "/api/queues/%2F/lim-dlq")
