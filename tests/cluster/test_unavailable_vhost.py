"""A vhost whose owner cannot be reached is refused with 320 CONNECTION_FORCED, the code
client libraries reconnect on, never with one that looks like a login failure (403) or a
final refusal (530)."""

from __future__ import annotations

import re

import amqp
import amqp.exceptions
import pika
import pika.exceptions

from tests.cluster.conftest import Cluster


def test_a_vhost_whose_owner_is_down_is_refused_with_a_retryable_code(cluster: Cluster):
    n1, _n2, n3 = cluster.nodes
    code, body = cluster.http(n1, "PUT", "/api/cluster/vhosts/lonely", {"owner": n3.name})
    assert code == 201, body
    assert cluster.http(n1, "PUT", "/api/permissions/lonely/guest",
                        {"configure": ".*", "write": ".*", "read": ".*"})[0] in (201, 204)
    cluster.wait_until(lambda: "lonely" in cluster.status(n1)["vhosts"], what="vhost known")
    placement = cluster.http(n1, "GET", "/api/cluster/vhosts/lonely")
    replicated = placement[0] == 200 and bool(placement[1].get("in_sync"))
    n3.kill()
    refusals = []
    for _ in range(20):
        try:
            conn = pika.BlockingConnection(pika.ConnectionParameters(
                "127.0.0.1", n1.amqp_port, "lonely", connection_attempts=1))
        except pika.exceptions.AMQPConnectionError as e:
            # pika reports any close during the handshake as ProbableAccessDeniedError (and
            # retries it in its documented reconnect loop); the broker's code is in its text
            closed = re.search(r'\((\d+)\) "([^"]*)"', str(e))
            assert closed is not None, repr(e)
            refusals.append((int(closed.group(1)), closed.group(2)))
            continue
        conn.close()  # a replica took the vhost over: nothing left to refuse
        break
    assert all(c == 320 for c, _ in refusals), refusals
    if not replicated:  # nobody can serve it until n3 is back
        assert refusals and "vhost 'lonely' is unavailable" in refusals[0][1]
        # kombu/Celery's transport classifies it as recoverable: they reconnect
        client = amqp.Connection(f"127.0.0.1:{n1.amqp_port}", virtual_host="lonely",
                                 userid="guest", password="guest", connect_timeout=10)
        try:
            client.connect()
            raise AssertionError("the vhost of a dead owner accepted a connection")
        except amqp.exceptions.ConnectionForced as e:
            assert isinstance(e, amqp.exceptions.RecoverableConnectionError)
        finally:
            client.collect()

