"""warrenctl's management commands against a real node, with rabbitmqctl's names, column
selection and --formatter json."""

from __future__ import annotations

import json

import pika
import pytest

from tests.integration.test_ctl_and_permissions import ctl
from tests.integration.test_management_api import Api


@pytest.fixture(scope="module")
def api(node) -> Api:
    return Api(node.http_url)


def test_status(node):
    out = ctl(node, "status").stdout
    assert f"Status of node {node.name}" in out and "Raft: leader" in out
    doc = json.loads(ctl(node, "status", "--formatter", "json").stdout)
    assert doc["overview"]["node"] == node.name and doc["nodes"][0]["running"] is True


def test_connections_channels_consumers_and_close(node):
    params = pika.URLParameters(node.url)
    params.client_properties = {"connection_name": "ctl-conn"}
    c = pika.BlockingConnection(params)
    ch = c.channel()
    ch.basic_qos(prefetch_count=3)
    ch.queue_declare("ctl-consumed", exclusive=True)
    ch.basic_consume("ctl-consumed", lambda *a: None, consumer_tag="ctl-tag")
    try:
        conns = json.loads(ctl(node, "list_connections", "name", "user", "client_properties",
                               "-f", "json").stdout)
        mine = [x for x in conns if x["client_properties"].get("connection_name") == "ctl-conn"]
        assert len(mine) == 1 and mine[0]["user"] == "guest"
        name = mine[0]["name"]
        chans = json.loads(ctl(node, "list_channels", "connection", "number", "prefetch_count",
                               "-f", "json").stdout)
        assert {"connection": name, "number": 1, "prefetch_count": 3} in chans
        table = ctl(node, "list_consumers", "queue_name", "consumer_tag", "prefetch_count").stdout
        lines = [line.split() for line in table.splitlines()]
        assert lines[0] == ["queue_name", "consumer_tag", "prefetch_count"]
        assert ["ctl-consumed", "ctl-tag", "3"] in lines
        ctl(node, "close_connection", name, "go away")
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
            c.process_data_events(time_limit=5)
            c.process_data_events(time_limit=5)
        assert e.value.reply_code == 320
        assert e.value.reply_text == "CONNECTION_FORCED - go away"
    finally:
        if c.is_open:
            c.close()


def test_purge_and_delete_queue(node, api):
    api("PUT", "/api/queues/%2F/ctl-q", json={"durable": True})
    for _ in range(3):
        api("POST", "/api/exchanges/%2F/amq.default/publish", json={
            "properties": {}, "routing_key": "ctl-q", "payload": "x",
            "payload_encoding": "string"})
    rows = json.loads(ctl(node, "list_queues", "name", "messages", "consumers", "-f",
                          "json").stdout)
    assert {"name": "ctl-q", "messages": 3, "consumers": 0} in rows
    r = ctl(node, "delete_queue", "ctl-q", "--if-empty", check=False)
    assert r.returncode == 2 and "HTTP 400" in r.stderr
    ctl(node, "purge_queue", "ctl-q")
    assert api.get("/api/queues/%2F/ctl-q")["messages"] == 0
    ctl(node, "delete_queue", "ctl-q", "--if-empty")
    assert api("GET", "/api/queues/%2F/ctl-q").status_code == 404


def test_user_tags_and_policies(node, api):
    ctl(node, "add_user", "ctl-tagged", "pw")
    ctl(node, "set_user_tags", "ctl-tagged", "monitoring", "policymaker")
    assert api.get("/api/users/ctl-tagged")["tags"] == ["monitoring", "policymaker"]
    ctl(node, "delete_user", "ctl-tagged")

    ctl(node, "set_policy", "--priority", "5", "--apply-to", "queues", "ctl-pol", "^ctl\\.",
        '{"max-length": 10}')
    rows = json.loads(ctl(node, "list_policies", "-f", "json").stdout)
    assert rows == [{"vhost": "/", "name": "ctl-pol", "pattern": "^ctl\\.",
                     "apply-to": "queues", "definition": {"max-length": 10}, "priority": 5}]
    r = ctl(node, "set_policy", "bad", ".*", "{not json", check=False)
    assert r.returncode == 2 and "not JSON" in r.stderr
    ctl(node, "clear_policy", "ctl-pol")
    assert json.loads(ctl(node, "list_policies", "-f", "json").stdout) == []


def test_export_and_import_definitions(node, api, tmp_path):
    assert api("PUT", "/api/vhosts/ctl-defs", json={}).status_code == 201
    r = api("PUT", "/api/queues/ctl-defs/kept", json={"durable": True})
    assert r.status_code == 401  # a new vhost grants no access, not even to its creator
    ctl(node, "set_permissions", "-p", "ctl-defs", "guest", ".*", ".*", ".*")
    assert api("PUT", "/api/queues/ctl-defs/kept", json={
        "durable": True, "arguments": {"x-max-length": 7}}).status_code == 201
    path = tmp_path / "defs.json"
    ctl(node, "export_definitions", str(path))
    doc = json.loads(path.read_text())
    assert {"name": "kept", "vhost": "ctl-defs", "durable": True, "auto_delete": False,
            "arguments": {"x-max-length": 7}} in doc["queues"]
    api("DELETE", "/api/vhosts/ctl-defs")
    assert api("GET", "/api/queues/ctl-defs/kept").status_code == 404
    ctl(node, "import_definitions", str(path))
    assert api.get("/api/queues/ctl-defs/kept")["arguments"] == {"x-max-length": 7}
    api("DELETE", "/api/vhosts/ctl-defs")
    r = ctl(node, "import_definitions", str(tmp_path / "missing.json"), check=False)
    assert r.returncode == 2 and "cannot read" in r.stderr
