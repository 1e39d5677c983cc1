"""--min-in-sync: with fewer copies in sync than asked, persistent publishes are nacked
rather than confirmed; once a replica is back in sync they are confirmed again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from pika.exceptions import NackError

from tests.cluster.conftest import Cluster

PERSISTENT = pika.BasicProperties(delivery_mode=2)


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(Path(tmp_path_factory.mktemp("min_in_sync")))
    for n in c.nodes:
        n.settings.update(min_in_sync="3", failover_timeout="1")
    c.start()
    yield c
    c.stop()


def placement(c: Cluster, vhost: str = "%2F") -> dict:
    live = next(n for n in c.nodes if n.running)
    code, body = c.http(live, "GET", f"/api/cluster/vhosts/{vhost}")
    assert code == 200, body
    return body  # type: ignore[return-value]


def test_fewer_copies_in_sync_than_asked_nacks_persistent_publishes(strict: Cluster) -> None:
    c = strict
    c.wait_until(lambda: len(placement(c)["in_sync"]) == 2, 30, "both replicas in sync")
    owner = c.by_name(placement(c)["owner"])
    replica = c.by_name(placement(c)["in_sync"][0])

    conn = pika.BlockingConnection(pika.URLParameters(owner.url))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("strict", durable=True)
    ch.basic_publish("", "strict", b"three copies", PERSISTENT)  # confirmed: no raise

    replica.kill()
    c.wait_until(lambda: replica.name not in placement(c)["in_sync"], 30,
                 "the dead replica dropped from the in-sync set")
    with pytest.raises(NackError):
        ch.basic_publish("", "strict", b"two copies only", PERSISTENT)
    # transient messages are not about copies: confirmed as before
    ch.basic_publish("", "strict", b"transient", pika.BasicProperties(delivery_mode=1))

    replica.start()
    c.wait_until(lambda: len(placement(c)["in_sync"]) == 2, 60, "the replica back in sync")
    ch.basic_publish("", "strict", b"three copies again", PERSISTENT)
    conn.close()

    conn = pika.BlockingConnection(pika.URLParameters(owner.url))
    ch = conn.channel()
    bodies = []
    while True:
        method, _props, body = ch.basic_get("strict", auto_ack=True)
        if method is None:
            break
        bodies.append(body)
    conn.close()
    # the nacked publish may or may not be stored (RabbitMQ says the same of a nack); the
    # confirmed ones must be
    assert bodies[0] == b"three copies"
    assert b"three copies again" in bodies
