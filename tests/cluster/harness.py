"""Fault-test harness: confirmed publishers, draining consumers, and the checks between them.

The question every fault test asks is the same: was any message whose publish the broker
*confirmed* lost?  So:

- `Publisher` (a background thread) publishes persistent messages, each with a unique id,
  to one durable queue, with publisher confirms and a window of messages in flight, through
  the nodes in turn: on any connection error (a killed node, a 320 CONNECTION_FORCED, a
  refused vhost, no confirm within `confirm_timeout`) it abandons the connection and goes on
  through the next node.  It records exactly the ids positively confirmed (`basic.ack`), and
  apart from them the nacked, returned and abandoned (never confirmed) ones.  It speaks
  AMQP over a raw socket with pika's frame codec, because pika's BlockingConnection waits
  for each confirm before the next publish and the faults must hit messages in flight.
- `Drainer` consumes a queue (through any live node, reconnecting as needed) until it is
  idle and empty, and returns a Counter of ids (duplicates counted) and which came
  redelivered.  It uses pika's BlockingConnection, an ordinary client.
- `assert_confirmed_present` fails naming every confirmed id that was not consumed.
- `vhost_state` / `wait_vhost` / `wait_epoch_change` poll `GET /api/cluster/vhosts/{vhost}`.

Timings (fault to first confirm, longest gap between confirms) are logged, never asserted.
"""

from __future__ import annotations

import logging
import secrets
import select
import socket
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pika
import pika.exceptions
import pika.frame
import pika.spec as spec

from tests.nodeproc import NodeProcess

if TYPE_CHECKING:
    from tests.cluster.conftest import Cluster

log = logging.getLogger("tests.faults")
# pika logs every refused or dropped connection (expected here) at ERROR, with tracebacks
logging.getLogger("pika").setLevel(logging.CRITICAL)

CONNECTION_FORCED = 320

# every publisher and background consumer started, so that a test that fails halfway does
# not leave them publishing into the next test's cluster (see stop_all)
_running: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def stop_all() -> None:
    """Stop whatever publishers and consumers a test left running (its fixture's finalizer)."""
    for t in list(_running):
        if t.is_alive():
            if isinstance(t, Publisher):
                t._settle = 0.0  # nothing to wait for: the test is over
            t._stop_event.set()  # type: ignore[attr-defined]
    for t in list(_running):
        t.join(20)


# =========================================================================================
# a minimal confirming AMQP publisher (raw socket, pika's codec)
# =========================================================================================
class ServerClosed(Exception):
    """The broker closed the connection (or the channel) with a reply code."""

    def __init__(self, code: int, text: str, what: str = "connection") -> None:
        super().__init__(f"{what} closed by broker: {code} {text}")
        self.code = code
        self.text = text


class Stalled(Exception):
    """No confirm for the oldest message in flight within the confirm timeout."""


class _Wire:
    """Frames over one socket: send, and read whatever complete frames have arrived."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.last_sent = time.monotonic()

    def send(self, *frames: Any) -> None:
        self.sock.sendall(b"".join(f.marshal() for f in frames))
        self.last_sent = time.monotonic()

    def read(self, timeout: float) -> list[Any]:
        ready, _, _ = select.select([self.sock], [], [], max(timeout, 0.0))
        if ready:
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionResetError("connection closed by peer (EOF)")
            self.buf += data
        frames = []
        while self.buf:
            used, frame = pika.frame.decode_frame(self.buf)
            if not used:
                break
            self.buf = self.buf[used:]
            if isinstance(frame, pika.frame.Method):
                if isinstance(frame.method, spec.Connection.Close):
                    self.send_quietly(pika.frame.Method(0, spec.Connection.CloseOk()))
                    raise ServerClosed(frame.method.reply_code, frame.method.reply_text)
                if isinstance(frame.method, spec.Channel.Close):
                    self.send_quietly(pika.frame.Method(frame.channel_number,
                                                        spec.Channel.CloseOk()))
                    raise ServerClosed(frame.method.reply_code, frame.method.reply_text,
                                       "channel")
            frames.append(frame)
        return frames

    def expect(self, method: type, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for f in self.read(deadline - time.monotonic()):
                if isinstance(f, pika.frame.Method) and isinstance(f.method, method):
                    return f.method
        raise TimeoutError(f"no {method.NAME} within {timeout}s")

    def send_quietly(self, *frames: Any) -> None:
        try:
            self.send(*frames)
        except OSError:
            pass


def open_confirm_channel(node: NodeProcess, user: str, password: str, vhost: str,
                         timeout: float = 10.0) -> tuple[_Wire, int]:
    """Connect, log in, open `vhost`, open channel 1 in confirm mode; (wire, heartbeat)."""
    sock = socket.create_connection((node.host, node.amqp_port), timeout=min(timeout, 5.0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)  # bounds sendall on a hung peer
    wire = _Wire(sock)
    try:
        sock.sendall(pika.frame.ProtocolHeader().marshal())
        wire.expect(spec.Connection.Start, timeout)
        caps = {"publisher_confirms": True, "basic.nack": True,
                "authentication_failure_close": True, "connection.blocked": True}
        wire.send(pika.frame.Method(0, spec.Connection.StartOk(
            client_properties={"product": "warrenmq fault-test publisher",
                               "capabilities": caps},
            mechanism="PLAIN", response=b"\0" + user.encode() + b"\0" + password.encode())))
        tune = wire.expect(spec.Connection.Tune, timeout)
        heartbeat = tune.heartbeat or 0
        wire.send(pika.frame.Method(0, spec.Connection.TuneOk(
            channel_max=tune.channel_max or 2047, frame_max=tune.frame_max or 131072,
            heartbeat=heartbeat)),
                  pika.frame.Method(0, spec.Connection.Open(virtual_host=vhost)))
        wire.expect(spec.Connection.OpenOk, timeout)
        wire.send(pika.frame.Method(1, spec.Channel.Open()))
        wire.expect(spec.Channel.OpenOk, timeout)
        wire.send(pika.frame.Method(1, spec.Confirm.Select()))
        wire.expect(spec.Confirm.SelectOk, timeout)
    except BaseException:
        sock.close()
        raise
    return wire, heartbeat


@dataclass
class Confirm:
    id: str
    node: str
    sent: float       # time.monotonic() when the publish was written
    confirmed: float  # time.monotonic() when its basic.ack arrived


@dataclass
class Close:
    at: float
    node: str
    code: int
    text: str


class Publisher(threading.Thread):
    """Publishes until stopped; see the module docstring.  Read the results after stop()."""

    def __init__(self, nodes: Sequence[NodeProcess], vhost: str, queue: str, *,
                 user: str = "guest", password: str = "guest", name: str = "p0",
                 start: int = 0, window: int = 20, rate: float = 200.0,
                 confirm_timeout: float = 5.0, rotate_every: int = 0,
                 body_size: int = 64) -> None:
        super().__init__(name=f"publisher-{name}", daemon=True)
        self.nodes = list(nodes)
        self.vhost, self.queue = vhost, queue
        self.user, self.password = user, password
        self.tag = f"{name}:{secrets.token_hex(2)}"  # ids unique across tests and runs
        self.index = start % len(self.nodes)
        self.window = window
        self.interval = 1.0 / rate if rate else 0.0
        self.confirm_timeout = confirm_timeout
        self.rotate_every = rotate_every
        self.body_size = body_size
        self._stop_event = threading.Event()
        self._settle = 15.0
        self._lock = threading.Lock()
        self.seq = 0
        self.confirmed: set[str] = set()
        self.confirms: list[Confirm] = []
        self.nacked: set[str] = set()
        self.returned: set[str] = set()
        self.unconfirmed: set[str] = set()  # in flight when their connection was given up
        self.closes: list[Close] = []        # connection.close / channel.close from brokers
        self.errors: list[tuple[float, str, str]] = []
        self.connects: list[tuple[float, str]] = []
        self.failure: BaseException | None = None

    # ------------------------------------------------------------------ control
    def request_stop(self, settle: float = 15.0) -> None:
        """Publish no more; wait up to `settle` s for confirms of what is in flight."""
        self._settle = settle
        self._stop_event.set()

    def stop(self, settle: float = 15.0) -> "Publisher":
        if not self._stop_event.is_set():
            self.request_stop(settle)
        self.join(self._settle + 30)
        if self.is_alive():
            raise RuntimeError(f"{self.name} did not stop")
        if self.failure is not None:
            raise RuntimeError(f"{self.name} crashed") from self.failure
        return self

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    def confirmed_count(self) -> int:
        with self._lock:
            return len(self.confirmed)

    def snapshot(self, what: str) -> Any:
        """A copy of one result (confirmed, nacked, ...) safe to read while running."""
        with self._lock:
            return list(getattr(self, what)) if isinstance(getattr(self, what), list) \
                else set(getattr(self, what))

    def confirms_since(self, t: float) -> list[Confirm]:
        with self._lock:
            return [c for c in self.confirms if c.confirmed >= t]

    # ------------------------------------------------------------------ the loop
    def start(self) -> None:
        _running.add(self)
        super().start()

    def run(self) -> None:
        # short and capped low: the time to the first confirm after a fault should measure
        # the broker, not this loop's waiting
        backoff = 0.02
        try:
            while not self._stop_event.is_set():
                node = self.nodes[self.index]
                try:
                    wire, heartbeat = open_confirm_channel(node, self.user, self.password,
                                                           self.vhost)
                except ServerClosed as e:
                    self._record_close(node, e)
                except (OSError, TimeoutError, pika.exceptions.AMQPError) as e:
                    self._record_error(node, e)
                else:
                    backoff = 0.02
                    with self._lock:
                        self.connects.append((time.monotonic(), node.name))
                    try:
                        self._pump(wire, heartbeat, node)
                    finally:
                        wire.sock.close()
                self.index = (self.index + 1) % len(self.nodes)
                if not self._stop_event.is_set():
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 0.2)
        except BaseException as e:  # a harness bug: say so instead of publishing nothing
            self.failure = e
            log.exception("%s crashed", self.name)

    def _pump(self, wire: _Wire, heartbeat: int, node: NodeProcess) -> None:
        outstanding: dict[int, tuple[str, float]] = {}  # delivery tag -> (id, sent)
        returned_here: set[str] = set()
        tag = 0
        published = 0
        next_send = time.monotonic()
        settle_deadline: float | None = None
        pending_return: str | None = None
        try:
            while True:
                now = time.monotonic()
                if self._stop_event.is_set():
                    if settle_deadline is None:
                        settle_deadline = now + self._settle
                    if not outstanding or now > settle_deadline:
                        self._close_quietly(wire)
                        return
                elif (self.rotate_every and published >= self.rotate_every
                      and not outstanding):
                    self._close_quietly(wire)  # go on through the next node
                    return
                else:
                    frames = []
                    while (len(outstanding) < self.window and now >= next_send
                           and not (self.rotate_every and published >= self.rotate_every)):
                        self.seq += 1
                        mid = f"{self.tag}-{self.seq}"
                        body = mid.encode().ljust(self.body_size, b".")
                        frames += [
                            pika.frame.Method(1, spec.Basic.Publish(
                                exchange="", routing_key=self.queue, mandatory=True)),
                            pika.frame.Header(1, len(body), spec.BasicProperties(
                                delivery_mode=2, message_id=mid)),
                            pika.frame.Body(1, body)]
                        tag += 1
                        published += 1
                        outstanding[tag] = (mid, now)
                        next_send = (next_send + self.interval if self.interval else now)
                        next_send = max(next_send, now - 1.0)  # no catch-up bursts
                    if frames:
                        wire.send(*frames)
                if outstanding:
                    oldest = next(iter(outstanding.values()))[1]
                    if now - oldest > self.confirm_timeout and settle_deadline is None:
                        raise Stalled(f"no confirm for {now - oldest:.1f}s "
                                      f"({len(outstanding)} in flight)")
                if heartbeat and now - wire.last_sent > heartbeat / 2:
                    wire.send(pika.frame.Heartbeat())
                can_send = len(outstanding) < self.window and settle_deadline is None
                wait = min(max(next_send - now, 0.0), 0.05) if can_send else 0.05
                for f in wire.read(wait):
                    if isinstance(f, pika.frame.Method):
                        m = f.method
                        if isinstance(m, (spec.Basic.Ack, spec.Basic.Nack)):
                            tags = ([t for t in outstanding if t <= m.delivery_tag]
                                    if m.multiple else [m.delivery_tag])
                            t_now = time.monotonic()
                            with self._lock:
                                for t in tags:
                                    entry = outstanding.pop(t, None)
                                    if entry is None:
                                        continue
                                    mid, sent = entry
                                    if isinstance(m, spec.Basic.Nack):
                                        self.nacked.add(mid)
                                    elif mid in returned_here:
                                        self.returned.add(mid)
                                    else:
                                        self.confirmed.add(mid)
                                        self.confirms.append(Confirm(mid, node.name, sent,
                                                                     t_now))
                        elif isinstance(m, spec.Basic.Return):
                            pending_return = "?"
                    elif isinstance(f, pika.frame.Body) and pending_return is not None:
                        mid = f.fragment.split(b".", 1)[0].decode()
                        returned_here.add(mid)
                        pending_return = None
        except ServerClosed as e:
            self._record_close(node, e)
        except (OSError, Stalled, TimeoutError, pika.exceptions.AMQPError) as e:
            self._record_error(node, e)
        finally:
            if outstanding:
                with self._lock:
                    self.unconfirmed.update(mid for mid, _ in outstanding.values())

    def _close_quietly(self, wire: _Wire) -> None:
        try:
            wire.send(pika.frame.Method(0, spec.Connection.Close(
                reply_code=200, reply_text="bye", class_id=0, method_id=0)))
            wire.expect(spec.Connection.CloseOk, 2.0)
        except (OSError, TimeoutError, ServerClosed):
            pass

    def _record_close(self, node: NodeProcess, e: ServerClosed) -> None:
        with self._lock:
            self.closes.append(Close(time.monotonic(), node.name, e.code, e.text))
        log.info("%s: %s: %s", self.name, node.name, e)

    def _record_error(self, node: NodeProcess, e: BaseException) -> None:
        with self._lock:
            self.errors.append((time.monotonic(), node.name, repr(e)))
        log.info("%s: %s: %r", self.name, node.name, e)


class Publishers:
    """Several publishers, each starting on a different node and going round from there."""

    def __init__(self, nodes: Sequence[NodeProcess], vhost: str, queue: str, *,
                 count: int | None = None, user: str = "guest", password: str = "guest",
                 prefix: str = "p", **options: Any) -> None:
        count = len(nodes) if count is None else count
        self.all = [Publisher(nodes, vhost, queue, user=user, password=password,
                              name=f"{prefix}{i}", start=i, **options)
                    for i in range(count)]

    def start(self) -> "Publishers":
        for p in self.all:
            p.start()
        return self

    def stop(self, settle: float = 15.0) -> "Publishers":
        for p in self.all:
            p.request_stop(settle)
        for p in self.all:
            p.stop(settle)
        summary = self.summary()
        log.info("publishers stopped: %s", summary)
        return self

    @property
    def confirmed(self) -> set[str]:
        return set().union(*(p.snapshot("confirmed") for p in self.all))

    @property
    def nacked(self) -> set[str]:
        return set().union(*(p.snapshot("nacked") for p in self.all))

    @property
    def returned(self) -> set[str]:
        return set().union(*(p.snapshot("returned") for p in self.all))

    @property
    def unconfirmed(self) -> set[str]:
        return set().union(*(p.snapshot("unconfirmed") for p in self.all))

    @property
    def closes(self) -> list[Close]:
        return sorted((c for p in self.all for c in p.snapshot("closes")), key=lambda c: c.at)

    def confirmed_count(self) -> int:
        return sum(p.confirmed_count() for p in self.all)

    def confirms_since(self, t: float) -> list[Confirm]:
        return sorted((c for p in self.all for c in p.confirms_since(t)),
                      key=lambda c: c.confirmed)

    def summary(self) -> dict:
        return {"confirmed": len(self.confirmed), "nacked": len(self.nacked),
                "returned": len(self.returned), "unconfirmed": len(self.unconfirmed),
                "closes": Counter((c.node, c.code) for c in self.closes),
                "errors": sum(len(p.errors) for p in self.all)}

    def wait_confirms(self, more: int, timeout: float = 60.0, what: str = "") -> None:
        """Wait until `more` further messages are confirmed (liveness, not speed)."""
        target = self.confirmed_count() + more
        deadline = time.monotonic() + timeout
        while self.confirmed_count() < target:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what or 'publishing'}: fewer than {more} confirms in {timeout}s; "
                    f"{self.summary()}; last errors: {self.last_errors()}")
            for p in self.all:
                if p.failure is not None:
                    raise RuntimeError(f"{p.name} crashed") from p.failure
            time.sleep(0.05)

    def last_errors(self, n: int = 5) -> list:
        errs = [e for p in self.all for e in p.snapshot("errors")]
        closes = [(c.at, c.node, f"{c.code} {c.text}") for c in self.closes]
        return sorted(errs + closes, key=lambda e: e[0])[-n:]


# =========================================================================================
# timing (logged, never asserted)
# =========================================================================================
def first_confirm_after(pubs: Publishers, t_fault: float) -> float | None:
    """Seconds from the fault to the first confirm of a message sent after it."""
    later = [c.confirmed for c in pubs.confirms_since(t_fault) if c.sent >= t_fault]
    return (min(later) - t_fault) if later else None


def max_confirm_gap(pubs: Publishers, t_from: float) -> float:
    times = [t_from] + [c.confirmed for c in pubs.confirms_since(t_from)]
    return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


def log_recovery(what: str, pubs: Publishers, t_fault: float) -> None:
    first = first_confirm_after(pubs, t_fault)
    log.warning("%s: first confirm of a message sent after the fault: %s; longest gap "
                "between confirms since: %.3fs", what,
                f"{first:.3f}s" if first is not None else "none",
                max_confirm_gap(pubs, t_fault))


# =========================================================================================
# consuming everything
# =========================================================================================
@dataclass
class Drained:
    counts: Counter = field(default_factory=Counter)       # id -> times delivered
    redelivered: Counter = field(default_factory=Counter)  # id -> times with redelivered
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def duplicates(self) -> dict[str, int]:
        return {m: n for m, n in self.counts.items() if n > 1}

    def merge(self, other: "Drained") -> "Drained":
        self.counts.update(other.counts)
        self.redelivered.update(other.redelivered)
        self.reconnects += other.reconnects
        self.errors += other.errors
        return self


def amqp_params(node: NodeProcess, vhost: str, user: str = "guest",
                password: str = "guest") -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host=node.host, port=node.amqp_port, virtual_host=vhost,
        credentials=pika.PlainCredentials(user, password), connection_attempts=1,
        socket_timeout=5, stack_timeout=15, blocked_connection_timeout=30)


class Drainer:
    """Consumes `queue` through the given nodes (in turn, on any error), acking as it
    goes.  `run(until_empty=True)` ends when the queue stays idle and reports 0 ready
    messages; `run(stop=event)` ends when the event is set (a background consumer)."""

    def __init__(self, nodes: Sequence[NodeProcess], vhost: str, queue: str, *,
                 user: str = "guest", password: str = "guest", prefetch: int = 500) -> None:
        self.nodes = list(nodes)
        self.vhost, self.queue = vhost, queue
        self.user, self.password = user, password
        self.prefetch = prefetch
        self.result = Drained()
        self.index = 0

    def run(self, *, idle: float = 2.0, timeout: float = 120.0,
            stop: threading.Event | None = None) -> Drained:
        deadline = time.monotonic() + timeout
        first = True
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"draining {self.queue!r} in {self.vhost!r} did not finish in {timeout}s "
                    f"({sum(self.result.counts.values())} consumed; errors: "
                    f"{self.result.errors[-5:]})")
            node = self.nodes[self.index]
            if not first:
                self.result.reconnects += 1
            first = False
            try:
                if self._consume(node, idle, deadline, stop):
                    return self.result
            except (pika.exceptions.AMQPError, OSError) as e:
                self.result.errors.append(f"{node.name}: {e!r}")
                log.info("drainer: %s: %r", node.name, e)
                self.index = (self.index + 1) % len(self.nodes)
                time.sleep(0.2)

    def _consume(self, node: NodeProcess, idle: float, deadline: float,
                 stop: threading.Event | None) -> bool:
        conn = pika.BlockingConnection(amqp_params(node, self.vhost, self.user, self.password))
        try:
            ch = conn.channel()
            ch.basic_qos(prefetch_count=self.prefetch)
            unacked = 0
            last_tag = 0
            for method, props, body in ch.consume(self.queue, inactivity_timeout=idle):
                if method is None or unacked >= self.prefetch // 2:
                    if unacked:
                        ch.basic_ack(last_tag, multiple=True)
                        unacked = 0
                if method is None:
                    if stop is not None:
                        if stop.is_set():
                            return True
                        continue
                    ready = ch.queue_declare(self.queue, passive=True).method.message_count
                    if ready == 0:
                        ch.cancel()
                        return True
                    log.info("drainer: idle but %d ready in %s; going on", ready, self.queue)
                    continue
                mid = (props.message_id if props and props.message_id
                       else body.split(b".", 1)[0].decode())
                self.result.counts[mid] += 1
                if method.redelivered:
                    self.result.redelivered[mid] += 1
                last_tag = method.delivery_tag
                unacked += 1
                if time.monotonic() > deadline or (stop is not None and stop.is_set()
                                                   and unacked == 0):
                    break
            if unacked:
                ch.basic_ack(last_tag, multiple=True)
            return stop is not None and stop.is_set()
        finally:
            try:
                conn.close()
            except Exception:  # already closed by the broker or the fault
                pass


def drain(nodes: Sequence[NodeProcess], vhost: str, queue: str, *, user: str = "guest",
          password: str = "guest", idle: float = 2.0, timeout: float = 120.0) -> Drained:
    """Consume `queue` to idle and empty through any of `nodes`."""
    d = Drainer(nodes, vhost, queue, user=user, password=password).run(idle=idle,
                                                                       timeout=timeout)
    log.info("drained %s/%s: %d deliveries of %d ids, %d redelivered, %d duplicates, "
             "%d reconnects", vhost, queue, sum(d.counts.values()), len(d.counts),
             sum(d.redelivered.values()), len(d.duplicates), d.reconnects)
    return d


class BackgroundConsumer(threading.Thread):
    """A consumer that keeps consuming (and reconnecting) while faults happen."""

    def __init__(self, nodes: Sequence[NodeProcess], vhost: str, queue: str, **kw: Any) -> None:
        super().__init__(name="background-consumer", daemon=True)
        self.drainer = Drainer(nodes, vhost, queue, **kw)
        self._stop_event = threading.Event()
        self.failure: BaseException | None = None

    def start(self) -> None:
        _running.add(self)
        super().start()

    def run(self) -> None:
        try:
            self.drainer.run(idle=0.5, timeout=3600, stop=self._stop_event)
        except BaseException as e:
            self.failure = e

    def stop(self) -> Drained:
        self._stop_event.set()
        self.join(60)
        if self.is_alive():
            raise RuntimeError("background consumer did not stop")
        if self.failure is not None:
            raise RuntimeError("background consumer failed") from self.failure
        return self.drainer.result


def hold_unacked(node: NodeProcess, vhost: str, queue: str, n: int, *, user: str = "guest",
                 password: str = "guest") -> tuple[pika.BlockingConnection, list[str]]:
    """Fetch n messages with manual ack and keep them unacked on an open connection."""
    conn = pika.BlockingConnection(amqp_params(node, vhost, user, password))
    ch = conn.channel()
    ids = []
    deadline = time.monotonic() + 30
    while len(ids) < n and time.monotonic() < deadline:
        method, props, body = ch.basic_get(queue, auto_ack=False)
        if method is None:
            time.sleep(0.05)
            continue
        ids.append(props.message_id or body.split(b".", 1)[0].decode())
    assert len(ids) == n, f"only {len(ids)} of {n} messages to hold in {queue}"
    return conn, ids


# =========================================================================================
# checks
# =========================================================================================
def assert_confirmed_present(confirmed: Iterable[str], drained: Drained,
                             cluster: "Cluster | None" = None, what: str = "") -> None:
    """Every confirmed id was consumed at least once; the failure lists the missing ones."""
    confirmed = set(confirmed)
    missing = sorted(confirmed - drained.counts.keys(), key=_id_order)
    if missing:
        msg = (f"{what}: {len(missing)} of {len(confirmed)} confirmed messages were lost: "
               f"{missing[:100]}{' ...' if len(missing) > 100 else ''}")
        if cluster is not None:
            msg += "\n" + log_tails(cluster)
        raise AssertionError(msg)
    log.info("%s: all %d confirmed messages consumed (%d duplicates, %d redelivered)", what,
             len(confirmed), len(drained.duplicates), sum(drained.redelivered.values()))


def _id_order(mid: str) -> tuple[str, int]:
    head, _, n = mid.rpartition("-")
    return (head, int(n) if n.isdigit() else 0)


def log_tails(cluster: "Cluster", lines: int = 40,
              pattern: Callable[[str], bool] | None = None) -> str:
    out = []
    for n in cluster.nodes:
        text = n.log_text().splitlines()
        if pattern is not None:
            text = [t for t in text if pattern(t)]
        out.append(f"--- {n.name} log (last {lines} lines) ---")
        out += text[-lines:]
    return "\n".join(out)


# =========================================================================================
# vhost placement as the API reports it
# =========================================================================================
def vhost_path(vhost: str) -> str:
    return f"/api/cluster/vhosts/{quote(vhost, safe='')}"


def vhost_state(cluster: "Cluster", vhost: str, via: Sequence[NodeProcess] | None = None,
                timeout: float = 3.0) -> dict:
    """GET /api/cluster/vhosts/{vhost} from the first of `via` that answers 200."""
    last: object = None
    for node in via or [n for n in cluster.nodes if n.running]:
        try:
            code, body = cluster.http(node, "GET", vhost_path(vhost), timeout=timeout)
        except OSError as e:
            last = e
            continue
        if code == 200 and isinstance(body, dict):
            return body
        last = (node.name, code, body)
    raise LookupError(f"no node answered for vhost {vhost!r}: {last}")


def wait_vhost(cluster: "Cluster", vhost: str, cond: Callable[[dict], bool], *,
               via: Sequence[NodeProcess] | None = None, timeout: float = 30.0,
               what: str = "vhost state") -> dict:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            st = vhost_state(cluster, vhost, via)
            last = st
            if cond(st):
                return st
        except LookupError as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(f"{what}: not reached in {timeout}s; last state {last}\n"
                         + log_tails(cluster, 25))


def wait_epoch_change(cluster: "Cluster", vhost: str, before: dict, *,
                      via: Sequence[NodeProcess] | None = None, timeout: float = 30.0,
                      since: float | None = None) -> dict:
    """Wait until another node owns `vhost` under a higher epoch; log how long it took."""
    st = wait_vhost(cluster, vhost,
                    lambda s: s["epoch"] > before["epoch"] and s["owner"] != before["owner"],
                    via=via, timeout=timeout,
                    what=f"{vhost}: a new owner after {before['owner']} (epoch {before['epoch']})")
    if since is not None:
        log.warning("%s: owner %s -> %s, epoch %s -> %s, seen %.3fs after the fault", vhost,
                    before["owner"], st["owner"], before["epoch"], st["epoch"],
                    time.monotonic() - since)
    return st


def wait_in_sync(cluster: "Cluster", vhost: str, n: int, *,
                 via: Sequence[NodeProcess] | None = None, timeout: float = 60.0) -> dict:
    return wait_vhost(cluster, vhost, lambda s: len(s.get("in_sync", [])) >= n, via=via,
                      timeout=timeout, what=f"{vhost}: {n} replicas in sync")


# =========================================================================================
# setting a vhost up
# =========================================================================================
def create_vhost(cluster: "Cluster", vhost: str, owner: NodeProcess, replicas: int,
                 queues: Sequence[str] = ("q",)) -> None:
    """A vhost placed on `owner` with `replicas` copies in all, the cluster's user allowed
    in, durable `queues` declared, all of it visible on every node."""
    n1 = cluster.nodes[0]
    code, body = cluster.http(n1, "PUT", vhost_path(vhost),
                              {"owner": owner.name, "replicas": replicas})
    assert code in (201, 204), (code, body)
    code, body = cluster.http(n1, "PUT", f"/api/permissions/{quote(vhost, safe='')}/"
                              f"{cluster.user}",
                              {"configure": ".*", "write": ".*", "read": ".*"})
    assert code in (201, 204), (code, body)
    for q in queues:
        cluster.wait_until(lambda q=q: cluster.http(
            n1, "PUT", f"/api/queues/{quote(vhost, safe='')}/{q}",
            {"durable": True})[0] in (201, 204), timeout=30, what=f"declare {q}")
    for node in cluster.nodes:
        for q in queues:
            cluster.wait_until(lambda node=node, q=q: cluster.http(
                node, "GET", f"/api/queues/{quote(vhost, safe='')}/{q}")[0] == 200,
                timeout=30, what=f"{vhost}/{q} on {node.name}")
        cluster.wait_until(lambda node=node: cluster.http(
            node, "GET", f"/api/permissions/{quote(vhost, safe='')}/{cluster.user}")[0] == 200,
            timeout=30, what=f"permissions on {node.name}")
