"""Definitions in RabbitMQ's file format: a file exported from RabbitMQ 3.13 imports unchanged
(its users log in with their RabbitMQ password hashes), and an export round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import pika
import pytest

from tests.integration.test_management_api import Api

RABBITMQ_EXPORT = Path(__file__).with_name("fixtures") / "rabbitmq-3.13-definitions.json"


@pytest.fixture(scope="module")
def api(node) -> Api:
    return Api(node.http_url)


@pytest.fixture(scope="module")
def imported(api):
    doc = json.loads(RABBITMQ_EXPORT.read_text())
    r = api("POST", "/api/definitions", json=doc)
    assert r.status_code == 204, r.text
    yield doc
    api("DELETE", "/api/vhosts/orders")
    for u in ("orders-app", "grafana"):
        api("DELETE", f"/api/users/{u}")


def test_rabbitmq_export_imports_unchanged(api, node, imported):
    assert api.get("/api/vhosts/orders")["description"] == "order pipeline"
    assert api.get("/api/vhosts/orders")["tags"] == ["production"]
    assert api.get("/api/users/grafana")["tags"] == ["monitoring"]  # a comma string in 3.x
    assert api.get("/api/users/grafana")["hashing_algorithm"] == "rabbit_password_hashing_sha512"
    assert api.get("/api/permissions/orders/orders-app")["configure"] == "^orders\\..*"
    assert api.get("/api/policies/orders/orders-limits")["definition"] == {
        "max-length": 100000, "overflow": "reject-publish"}
    created = api.get("/api/queues/orders/orders.created")
    assert created["arguments"] == {"x-queue-type": "classic", "x-message-ttl": 3600000}
    assert created["durable"] is True and created["policy"] == "orders-limits"
    assert api.get("/api/exchanges/orders/orders.fanout")["arguments"] == {
        "alternate-exchange": "orders.events"}
    bindings = api.get("/api/bindings/orders")
    assert any(b["source"] == "orders.fanout" and b["destination"] == "orders.events"
               and b["destination_type"] == "exchange" for b in bindings)

    # the RabbitMQ password hashes work: orders-app logs in over AMQP with its password
    url = f"amqp://orders-app:s3cret@127.0.0.1:{node.amqp_port}/orders"
    c = pika.BlockingConnection(pika.URLParameters(url))
    ch = c.channel()
    ch.basic_publish("orders.events", "order.created.eu", b"order-1")
    ch.basic_publish("orders.fanout", "order.created.eu", b"order-2")  # fanout -> e2e -> topic
    assert ch.basic_get("orders.created", auto_ack=True)[2] == b"order-1"
    assert ch.basic_get("orders.created", auto_ack=True)[2] == b"order-2"
    assert ch.basic_get("orders.audit", auto_ack=True)[2] == b"order-2"
    c.close()
    # …and grafana (sha512, monitoring) reaches the management API
    assert Api(node.http_url, ("grafana", "m0nitor")).get("/api/whoami")["tags"] == [
        "monitoring"]


def test_import_is_a_merge_that_keeps_existing_objects(api, imported):
    doc = json.loads(json.dumps(imported))
    doc["queues"][0]["arguments"] = {"x-message-ttl": 1}  # conflicting: the existing one wins
    doc["vhosts"][0]["description"] = "renamed"  # mutable: overwritten
    assert api("POST", "/api/definitions", json=doc).status_code == 204
    assert api.get("/api/queues/orders/orders.created")["arguments"]["x-message-ttl"] == 3600000
    assert api.get("/api/vhosts/orders")["description"] == "renamed"


def test_export_round_trips(api, imported):
    exported = api.get("/api/definitions")
    for key in ("rabbit_version", "rabbitmq_version", "product_name", "product_version",
                "users", "vhosts", "permissions", "topic_permissions", "parameters",
                "global_parameters", "policies", "queues", "exchanges", "bindings"):
        assert key in exported, key
    ours = {k: [i for i in exported[k] if i.get("vhost") == "orders"]
            for k in ("permissions", "policies", "queues", "exchanges", "bindings")}
    theirs = {k: imported[k] for k in ours}

    def canon(items: list[dict]) -> list[str]:
        return sorted(json.dumps(i, sort_keys=True) for i in items)
    assert canon(ours["queues"]) == canon(theirs["queues"])
    assert canon(ours["exchanges"]) == canon(theirs["exchanges"])
    assert canon(ours["bindings"]) == canon(theirs["bindings"])
    assert canon(ours["policies"]) == canon(theirs["policies"])
    assert canon(ours["permissions"]) == canon(theirs["permissions"])
    users = {u["name"]: u for u in exported["users"]}
    for u in imported["users"]:
        assert users[u["name"]]["password_hash"] == u["password_hash"]
        assert users[u["name"]]["hashing_algorithm"] == u["hashing_algorithm"]
    assert not any(x["name"].startswith("amq.") or x["name"] == ""
                   for x in exported["exchanges"])

    # import the export into a fresh vhost name through the single-vhost endpoints
    single = api.get("/api/definitions/orders")
    assert "vhosts" not in single and "users" not in single
    assert all("vhost" not in q for q in single["queues"])
    assert api("PUT", "/api/vhosts/orders-copy", json={}).status_code == 201
    try:
        r = api("POST", "/api/definitions/orders-copy", json=single)
        assert r.status_code == 204, r.text
        copy = api.get("/api/definitions/orders-copy")
        assert canon(copy["queues"]) == canon(single["queues"])
        assert canon(copy["bindings"]) == canon(single["bindings"])
    finally:
        api("DELETE", "/api/vhosts/orders-copy")


def test_multipart_upload_and_bad_files(api, imported):
    r = api("POST", "/api/definitions",
            files={"file": ("defs.json", json.dumps({"vhosts": [{"name": "mp-vh"}]}))})
    assert r.status_code == 204, r.text
    assert api.get("/api/vhosts/mp-vh")["name"] == "mp-vh"
    api("DELETE", "/api/vhosts/mp-vh")
    r = api("POST", "/api/definitions", data=b"not json",
            headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    r = api("POST", "/api/definitions", json={"queues": [{"name": "q", "vhost": "ghost"}]})
    assert r.status_code == 400 and "ghost" in r.json()["reason"]
    r = api("POST", "/api/definitions", json={"exchanges": [
        {"name": "x", "vhost": "orders", "type": "x-no-such-type"}]})
    assert r.status_code == 400
