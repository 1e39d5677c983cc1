"""The cluster port authenticates every frame, both ways, not only its preamble.

Three real nodes.  An interceptor sits on the path to the owner's cluster port (an iptables
REDIRECT of the nodes' connections to it, see `Interceptor`), as a host on the network
between two nodes could: it relays the bytes and injects frames of its own.  A forged ack
must not release a confirm, a forged `fenced` must not depose the owner, and a replica that
reaches an impostor at its owner's address (a socket server without the secret) must keep
its copy.  A `fenced` from a session that does hold the secret deposes the owner only with
a newer epoch than its own."""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import lmdb
import msgpack
import pika
import pytest
from pika import spec

from cluster import wire
from node.runtime.stores import store_dir_name
from tests.cluster.conftest import SECRET, Cluster
from tests.cluster.harness import (
    create_vhost,
    open_confirm_channel,
    vhost_state,
    wait_in_sync,
    wait_vhost,
)
from tests.nodeproc import NodeProcess, free_port

# long enough that no replica is dropped for lagging while a test looks
SETTINGS = {"failover_timeout": "20", "min_in_sync": "2"}


class _Relay:
    """One intercepted connection: node -> interceptor -> the real cluster port."""

    def __init__(self, down: socket.socket, up: socket.socket) -> None:
        self.down = down  # the connecting node
        self.up = up  # the owner's real cluster port
        self.facts: dict | None = None
        self.hold_to_node = threading.Event()  # stop passing the owner's bytes on
        self._to_owner = threading.Lock()
        self._preamble = b""

    def inject_to_owner(self, data: bytes) -> None:
        with self._to_owner:
            self.up.sendall(data)

    def run(self) -> None:
        threading.Thread(target=self._pump_down, daemon=True).start()
        try:
            while True:
                data = self.down.recv(1 << 16)
                if not data:
                    break
                if self.facts is None:
                    self._sniff(data)
                with self._to_owner:
                    self.up.sendall(data)
        except OSError:
            pass
        finally:
            self.close()

    def _sniff(self, data: bytes) -> None:
        self._preamble += data
        if len(self._preamble) >= 4:
            size = int.from_bytes(self._preamble[:4], "big")
            if len(self._preamble) >= 4 + size:
                self.facts = msgpack.unpackb(self._preamble[4:4 + size], raw=False)

    def _pump_down(self) -> None:
        try:
            while True:
                while self.hold_to_node.is_set():
                    time.sleep(0.01)
                data = self.up.recv(1 << 16)
                if not data:
                    break
                while self.hold_to_node.is_set():
                    time.sleep(0.01)
                self.down.sendall(data)
        except OSError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        for s in (self.down, self.up):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


class Interceptor:
    """On the path to one node's cluster port: connections from 127.0.0.1 to that port are
    redirected here by iptables; the interceptor's own connections to it come from
    127.0.0.2, which the rule leaves alone."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.relays: list[_Relay] = []
        self.held: set[tuple[str, str]] = set()  # (vhost, node) replicate sessions held
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", free_port()))
        self._listener.listen(64)
        self._rule = ["-p", "tcp", "-s", "127.0.0.1", "-d", "127.0.0.1", "--dport", str(port),
                      "-j", "REDIRECT", "--to-ports", str(self._listener.getsockname()[1])]

    def start(self) -> "Interceptor":
        if os.geteuid() != 0 or shutil.which("iptables") is None:
            pytest.fail("the interceptor needs root and iptables (an iptables REDIRECT puts "
                        "it on the path to the owner's cluster port)")
        r = subprocess.run(["iptables", "-t", "nat", "-I", "OUTPUT", *self._rule],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.fail(f"cannot install the interceptor's iptables rule: {r.stderr}")
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        subprocess.run(["iptables", "-t", "nat", "-D", "OUTPUT", *self._rule],
                       capture_output=True)
        self._listener.close()
        for relay in self.relays:
            relay.close()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            up = socket.socket()
            try:
                up.bind(("127.0.0.2", 0))
                up.connect(("127.0.0.1", self.port))
            except OSError:
                down.close()
                continue
            relay = _Relay(down, up)
            self.relays = [r for r in self.relays if r.up.fileno() != -1] + [relay]
            threading.Thread(target=self._run, args=(relay,), daemon=True).start()

    def _run(self, relay: _Relay) -> None:
        # a replica's new sessions are held too, so that none of them can ack for it
        def watch() -> None:
            deadline = time.monotonic() + 10
            while relay.facts is None and time.monotonic() < deadline:
                time.sleep(0.005)
            f = relay.facts or {}
            if f.get("kind") == "replicate" and (f.get("vhost"), f.get("node")) in self.held:
                relay.hold_to_node.set()
        threading.Thread(target=watch, daemon=True).start()
        relay.run()

    def replicate_session(self, vhost: str, node: str) -> _Relay:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for relay in reversed(self.relays):
                f = relay.facts or {}
                if f.get("kind") == "replicate" and f.get("vhost") == vhost \
                        and f.get("node") == node:
                    return relay
            time.sleep(0.05)
        raise AssertionError(f"no replication session of {node} for {vhost} went through "
                             "the interceptor")

    def hold(self, vhost: str, node: str) -> None:
        """The owner's records no longer reach ``node`` (this session and its next ones)."""
        self.held.add((vhost, node))
        self.replicate_session(vhost, node).hold_to_node.set()


@pytest.fixture(scope="module")
def intercepted(tmp_path_factory: pytest.TempPathFactory):
    c = Cluster(tmp_path_factory.mktemp("auth"), **SETTINGS)
    spy = Interceptor(c.nodes[0].forward_port).start()
    try:
        c.start()
        yield c, spy
    finally:
        c.stop()
        spy.stop()


def publish(ch, vhost: str, body: bytes, tag: int) -> str:
    """One persistent publish on a confirm channel; 'ack' or 'nack' for delivery tag
    ``tag``."""
    ch.send(pika.frame.Method(1, spec.Basic.Publish(exchange="", routing_key="q")),
            pika.frame.Header(1, len(body), spec.BasicProperties(delivery_mode=2)),
            pika.frame.Body(1, body))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for f in ch.read(deadline - time.monotonic()):
            if isinstance(f, pika.frame.Method) and f.method.delivery_tag == tag:
                if isinstance(f.method, spec.Basic.Ack):
                    return "ack"
                if isinstance(f.method, spec.Basic.Nack):
                    return "nack"
    raise AssertionError(f"no confirm for publish {tag} within 30 s")


def placed(c: Cluster, vhost: str, copies: int) -> dict:
    owner = c.nodes[0]
    create_vhost(c, vhost, owner, copies)
    return wait_in_sync(c, vhost, copies - 1)


def test_a_forged_ack_releases_no_confirm(intercepted):
    """The replica gets nothing more from its owner, so it acks nothing; an ack of the
    owner's newest offset injected into its session must not confirm the publish."""
    c, spy = intercepted
    st = placed(c, "forged-ack", 2)
    replica = st["replicas"][0]
    ch, _ = open_confirm_channel(c.nodes[0], c.user, c.password, "forged-ack")
    assert publish(ch, "forged-ack", b"first", 1) == "ack"
    spy.hold("forged-ack", replica)
    ch.send(pika.frame.Method(1, spec.Basic.Publish(exchange="", routing_key="q")),
            pika.frame.Header(1, 6, spec.BasicProperties(delivery_mode=2)),
            pika.frame.Body(1, b"second"))
    # the owner numbered the record (its replica's lag says so) and commits it at once
    st = wait_vhost(c, "forged-ack", lambda s: s["lag"][replica]["records"] >= 1,
                    via=c.nodes[:1], what="the second publish numbered on the owner")
    time.sleep(0.3)
    # an ack of the owner's newest offset, with 16 bytes where a MAC would be
    spy.replicate_session("forged-ack", replica).inject_to_owner(
        wire.ack(st["epoch"], st["offset"]) + os.urandom(16))
    deadline = time.monotonic() + 30
    outcome = None
    while outcome is None and time.monotonic() < deadline:
        for f in ch.read(deadline - time.monotonic()):
            if isinstance(f, pika.frame.Method) and f.method.delivery_tag == 2:
                outcome = type(f.method).__name__
    # the replica left the in-sync set: one copy is fewer than --min-in-sync 2
    assert outcome == "Nack", outcome
    assert "without the session's MAC" in c.nodes[0].log_text()
    ch.sock.close()


def test_a_forged_fenced_deposes_nobody(intercepted):
    c, spy = intercepted
    st = placed(c, "forged-fenced", 3)
    replica = st["replicas"][0]
    ch, _ = open_confirm_channel(c.nodes[0], c.user, c.password, "forged-fenced")
    assert publish(ch, "forged-fenced", b"before", 1) == "ack"
    marks = c.nodes[0].log_text().count("without the session's MAC")
    spy.replicate_session("forged-fenced", replica).inject_to_owner(
        wire.control({"t": "fenced", "epoch": st["epoch"] + 1}) + os.urandom(16))
    c.wait_until(lambda: c.nodes[0].log_text().count("without the session's MAC") > marks,
                 what="the owner refusing the forged frame")
    # still the owner, same epoch, its client's connection untouched
    assert publish(ch, "forged-fenced", b"after", 2) == "ack"
    now = vhost_state(c, "forged-fenced", via=c.nodes[:1])
    assert (now["owner"], now["epoch"]) == (c.nodes[0].name, st["epoch"])
    assert "lost ownership" not in c.nodes[0].log_text()
    ch.sock.close()


def _session(node: NodeProcess, facts: dict) -> tuple[socket.socket, wire.Seal]:
    """A session on ``node``'s cluster port that does hold the secret (as a node would)."""
    from node.clients.forwarding import (
        MAC_SIZE,
        MAGIC,
        NONCE_SIZE,
        client_proof,
        forward_key,
        server_proof,
    )
    key = forward_key(SECRET)
    s = socket.create_connection(("127.0.0.1", node.forward_port), timeout=5)
    hello = b""
    while len(hello) < len(MAGIC) + NONCE_SIZE:
        hello += s.recv(len(MAGIC) + NONCE_SIZE - len(hello))
    theirs, mine = hello[len(MAGIC):], os.urandom(NONCE_SIZE)
    payload = msgpack.packb(facts)
    s.sendall(len(payload).to_bytes(4, "big") + payload + mine
              + client_proof(key, theirs, mine, payload))
    proof = b""
    while len(proof) < MAC_SIZE:
        proof += s.recv(MAC_SIZE - len(proof))
    assert proof == server_proof(key, theirs, mine, payload)
    to_server = hmac.new(key, b"frames client->server\x00" + theirs + mine,
                         hashlib.sha256).digest()
    return s, wire.Seal(to_server)


def test_fenced_with_an_epoch_not_newer_deposes_nobody(intercepted):
    """Even from a session that holds the secret: `fenced` counts only with a newer epoch."""
    c, _ = intercepted
    st = placed(c, "stale-fenced", 3)
    ch, _ = open_confirm_channel(c.nodes[0], c.user, c.password, "stale-fenced")
    assert publish(ch, "stale-fenced", b"before", 1) == "ack"
    s, seal = _session(c.nodes[0], {"kind": "replicate", "vhost": "stale-fenced",
                                       "node": st["replicas"][0], "epoch": st["epoch"],
                                       "position": [st["epoch"], st["offset"]]})
    frame = wire.control({"t": "fenced", "epoch": st["epoch"]})
    s.sendall(frame + seal.mac(frame))
    s.settimeout(10)
    try:
        while s.recv(1 << 16):  # the owner ends the session
            pass
    except OSError:
        pass
    s.close()
    assert publish(ch, "stale-fenced", b"after", 2) == "ack"
    now = vhost_state(c, "stale-fenced", via=c.nodes[:1])
    assert (now["owner"], now["epoch"]) == (c.nodes[0].name, st["epoch"])
    assert "lost ownership" not in c.nodes[0].log_text()
    ch.sock.close()


def test_a_replica_that_reaches_an_impostor_keeps_its_copy(tmp_path: Path):
    """The owner is killed; a server without the secret takes its cluster port and answers
    the replica as an owner would, with an empty snapshot.  The replica must not load it."""
    c = Cluster(tmp_path, **SETTINGS)
    try:
        c.start()
        owner = c.nodes[0]
        st = placed(c, "impostor", 2)
        replica = c.by_name(st["replicas"][0])
        ch, _ = open_confirm_channel(owner, c.user, c.password, "impostor")
        for i in range(1, 21):
            assert publish(ch, "impostor", b"m%d" % i, i) == "ack"
        ch.sock.close()
        owner.kill()
        served: list[bytes] = []
        impostor = socket.socket()
        impostor.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        impostor.bind(("127.0.0.1", owner.forward_port))
        impostor.listen(16)
        impostor.settimeout(20)
        from node.clients.forwarding import MAGIC
        epoch = st["epoch"]
        lie = (MAGIC + os.urandom(32)
               + wire.control({"t": "hello", "mode": "snapshot", "epoch": epoch})
               + wire.control({"t": "snap_begin"})
               + wire.control({"t": "snap_end", "position": [epoch, 1],
                               "epochs": [[epoch, 1]]}))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not served:
            conn, _ = impostor.accept()
            conn.settimeout(2)
            conn.sendall(lie)
            try:
                preamble = conn.recv(1 << 16)
            except OSError:
                preamble = b""
            size = int.from_bytes(preamble[:4], "big") if len(preamble) >= 4 else 0
            try:
                facts = msgpack.unpackb(preamble[4:4 + size], raw=False) if size else {}
            except ValueError:
                facts = {}
            if facts.get("kind") == "replicate" and facts.get("node") == replica.name:
                served.append(preamble)
                time.sleep(1.0)  # what the replica does with it, it does now
            conn.close()
        impostor.close()
        assert served, "the replica never came to the impostor"
        replica.stop()
        path = replica.data_dir / "vhosts" / store_dir_name("impostor")
        env = lmdb.open(str(path), max_dbs=4, readonly=True, lock=False, subdir=True)
        with env.begin() as txn:
            held = txn.stat(env.open_db(b"msgs", txn=txn, create=False))["entries"]
        env.close()
        assert held == 20
    finally:
        c.stop()
