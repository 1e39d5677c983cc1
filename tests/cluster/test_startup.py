"""Starting like a service: a node without a quorum waits (and says why) instead of
exiting, and a wrong cluster secret is named in the logs of both sides."""

from __future__ import annotations

import re
import socket

import pytest

from tests.cluster.conftest import SECRET, Cluster
from tests.nodeproc import NodeProcess


def test_a_node_without_quorum_waits_then_joins_when_peers_come(tmp_path):
    c = Cluster(tmp_path)
    first, *others = c.nodes
    try:
        first.launch()
        c.wait_until(lambda: "no Raft quorum yet" in first.log_text(), timeout=60,
                     what="the waiting node to say why it waits")
        line = next(x for x in first.log_text().splitlines() if "no Raft quorum yet" in x)
        assert "1 of 3 Raft members reachable (a majority is 2)" in line
        for other in others:
            assert other.raft_address in line
        assert first.running, "a node without quorum must wait, not exit"
        for other in others:
            other.launch()
        for n in c.nodes:
            n.wait(60)
        c.wait_until(lambda: len(c.status(first)["nodes"]) == 3, timeout=60,
                     what="all three nodes registered")
    finally:
        c.stop()


def test_a_wrong_cluster_secret_is_named_on_both_sides(tmp_path):
    a = NodeProcess(tmp_path / "a", name="a@localhost", cluster_secret=SECRET)
    b = NodeProcess(tmp_path / "b", name="b@localhost", cluster_secret="another-secret")
    peers = f"{a.raft_address},{b.raft_address}"
    a.settings["peers"] = b.settings["peers"] = peers
    hint = "the cluster secret (WARREN_CLUSTER_SECRET) differs between the two nodes"
    try:
        a.launch()
        b.launch()
        # the node with the greater address connects; the other one accepts
        dialer, acceptor = (a, b) if a.raft_address > b.raft_address else (b, a)
        Cluster.wait_until(lambda: hint in dialer.log_text() and hint in acceptor.log_text(),
                           timeout=60, what="both nodes to name the secret mismatch")
        assert re.search(rf"Raft peer {re.escape(acceptor.raft_address)} hangs up on this "
                         rf"node's handshake; most likely {re.escape(hint)}", dialer.log_text())
        assert re.search(rf"Raft connection from 127\.0\.0\.1 refused: its messages fail "
                         rf"authentication here; {re.escape(hint)}", acceptor.log_text())
        Cluster.wait_until(lambda: "cluster secret differs on" in acceptor.log_text(),
                           timeout=60, what="the waiting line to name the mismatch")
        assert a.running and b.running
    finally:
        a.stop()
        b.stop()


def test_raft_and_forwarding_ports_listen_only_on_their_address(tmp_path):
    """--raft-address 127.0.0.2:P listens on 127.0.0.2 only (not 0.0.0.0), likewise
    --forward-address: a host with a public and a private network keeps them private."""
    node = NodeProcess(tmp_path / "n", name="n@localhost", cluster_secret=SECRET)
    node.settings["raft_address"] = f"127.0.0.2:{node.raft_port}"
    node.settings["forward_address"] = f"127.0.0.2:{node.forward_port}"
    try:
        node.start(60)
        for port in (node.raft_port, node.forward_port):
            with socket.create_connection(("127.0.0.2", port), timeout=5):
                pass
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        node.stop()
