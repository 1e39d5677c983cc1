"""A real `warren` process shared by the integration tests of one session."""

from __future__ import annotations

import pika
import pytest

from tests.nodeproc import NodeProcess


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory):
    n = NodeProcess(tmp_path_factory.mktemp("node") / "data").start()
    yield n
    n.stop()
    if n.proc is not None and n.proc.returncode not in (0, -15):
        print(n.log_text()[-5000:])


@pytest.fixture
def conn(node: NodeProcess):
    c = pika.BlockingConnection(pika.URLParameters(node.url))
    yield c
    if c.is_open:
        c.close()


@pytest.fixture
def ch(conn):
    return conn.channel()
