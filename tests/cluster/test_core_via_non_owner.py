"""The core integration tests, pointed at a node that does not own the vhost: every client
connection is forwarded frame for frame to the owner, and clients see nothing unusual."""

from __future__ import annotations

import pika
import pytest

from tests.cluster.conftest import Cluster
from tests.integration.test_aio_pika import *  # noqa: F401,F403
from tests.integration.test_basic_pika import *  # noqa: F401,F403
from tests.integration.test_declare import *  # noqa: F401,F403
from tests.integration.test_errors import *  # noqa: F401,F403
from tests.integration.test_extensions import *  # noqa: F401,F403
from tests.integration.test_kombu import *  # noqa: F401,F403
from tests.integration.test_tutorials_pika import *  # noqa: F401,F403


class NonOwner:
    """Looks like tests.nodeproc.NodeProcess to the imported tests."""

    def __init__(self, cluster: Cluster) -> None:
        owner = cluster.owner_of("/")
        self.target = next(n for n in cluster.nodes if n is not owner)
        self.owner = owner
        self.amqp_port = self.target.amqp_port
        self.http_port = self.target.http_port
        self.url = self.target.url
        self.http_url = self.target.http_url


@pytest.fixture(scope="module")
def node(cluster: Cluster):
    return NonOwner(cluster)


@pytest.fixture
def conn(node):
    c = pika.BlockingConnection(pika.URLParameters(node.url))
    yield c
    if c.is_open:
        c.close()


@pytest.fixture
def ch(conn):
    return conn.channel()
