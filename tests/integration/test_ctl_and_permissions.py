"""warrenctl against a real node, and per-vhost permissions enforced with ACCESS_REFUSED."""

from __future__ import annotations

import json
import subprocess
import sys

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from tests.nodeproc import REPO


def ctl(node, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.ctl", "--node", node.http_url, *args],
                          capture_output=True, text=True, cwd=REPO, check=check, timeout=30)


def test_vhost_user_permission_lifecycle(node):
    ctl(node, "add_vhost", "staging")
    assert "staging" in ctl(node, "list_vhosts").stdout.split()
    ctl(node, "add_user", "alice", "s3cret")
    users = json.loads(ctl(node, "list_users", "--formatter", "json").stdout)
    assert {"name": "alice", "tags": []} in users
    # the default exchange is checked as amq.default, as in RabbitMQ
    ctl(node, "set_permissions", "-p", "staging", "alice", "^alice-.*",
        "^alice-.*|amq\\.topic|amq\\.default", "^alice-.*")
    perms = json.loads(ctl(node, "list_permissions", "-p", "staging", "-f", "json").stdout)
    assert perms == [{"user": "alice", "vhost": "staging", "configure": "^alice-.*",
                      "write": "^alice-.*|amq\\.topic|amq\\.default", "read": "^alice-.*"}]

    url = f"amqp://alice:s3cret@127.0.0.1:{node.amqp_port}/staging"
    c = pika.BlockingConnection(pika.URLParameters(url))
    ch = c.channel()
    ch.queue_declare("alice-jobs", durable=True)
    ch.basic_publish("", "alice-jobs", b"mine")
    assert ch.basic_get("alice-jobs", auto_ack=True)[2] == b"mine"
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare("bobs-queue")
    assert e.value.reply_code == 403
    assert e.value.reply_text == ("ACCESS_REFUSED - access to queue 'bobs-queue' in vhost "
                                  "'staging' refused for user 'alice'")
    ch = c.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_bind("alice-jobs", "amq.direct", "k")  # no read on amq.direct
    assert e.value.reply_code == 403
    ch = c.channel()
    ch.basic_publish("amq.fanout", "", b"no write here")
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare("alice-jobs", durable=True, passive=True)
    assert e.value.reply_code == 403
    c.close()

    listed = ctl(node, "list_queues", "-p", "staging", "name", "messages", "durable").stdout
    assert listed.split("\n")[0].split() == ["name", "messages", "durable"]
    assert "alice-jobs" in listed
    ctl(node, "change_password", "alice", "n3w")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(pika.URLParameters(url))
    # no permission on "/": 530 NOT_ALLOWED on connection.open
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        pika.BlockingConnection(pika.URLParameters(
            f"amqp://alice:n3w@127.0.0.1:{node.amqp_port}/%2F"))
    ctl(node, "delete_user", "alice")
    ctl(node, "delete_vhost", "staging")
    assert "staging" not in ctl(node, "list_vhosts").stdout.split()


def test_list_exchanges_and_bindings(node, ch):
    ch.exchange_declare("ctl_x", exchange_type="topic", durable=True)
    ch.queue_declare("ctl_q", durable=True)
    ch.queue_bind("ctl_q", "ctl_x", "a.#")
    ex = ctl(node, "list_exchanges", "name", "type").stdout
    assert any(line.split() == ["ctl_x", "topic"] for line in ex.splitlines())
    b = json.loads(ctl(node, "list_bindings", "-f", "json").stdout)
    assert {"source": "ctl_x", "destination": "ctl_q", "destination_type": "queue",
            "routing_key": "a.#"} in b
    ch.queue_delete("ctl_q")
    ch.exchange_delete("ctl_x")


def test_ctl_reports_errors(node):
    r = ctl(node, "delete_user", "nobody", check=False)
    assert r.returncode == 2 and "HTTP 404" in r.stderr
    r = ctl(node, "--password", "wrong", "list_vhosts", check=False)
    assert r.returncode == 2 and "HTTP 401" in r.stderr


def test_passwords_are_hashed_and_salted(node):
    ctl(node, "add_user", "hashcheck", "same")
    ctl(node, "add_user", "hashcheck2", "same")
    users = {u["name"]: u for u in json.loads(ctl(node, "list_users", "-f", "json",
                                                  "name", "password_hash").stdout)}
    h1, h2 = users["hashcheck"]["password_hash"], users["hashcheck2"]["password_hash"]
    assert h1 != h2 and "same" not in h1  # salted: equal passwords, different hashes
    ctl(node, "delete_user", "hashcheck")
    ctl(node, "delete_user", "hashcheck2")
