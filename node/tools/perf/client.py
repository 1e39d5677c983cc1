"""The wire side of `warren perf`: a minimal blocking AMQP 0-9-1 client (handshake,
topology methods) and the producer and consumer hot loops that run in worker processes.

Setup methods go through the generated codec (`node.amqp.spec`, `node.amqp.frames`); the
hot loops do not: a producer writes a pre-encoded publish (method + header + body frames,
built once per message size) repeated into large batches with the send timestamp patched
in, and a consumer splits deliveries with a minimal frame parser that reads only the
delivery tag and the first 8 body bytes.  Latency is CLOCK_MONOTONIC (shared by all
processes of the machine) at receipt minus the timestamp in the body.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from node.amqp import spec
from node.amqp.frames import (
    PROTOCOL_HEADER,
    content_frames,
    content_header_payload,
    method_frame,
)

_FRAME = struct.Struct(">BHI")
_Q = struct.Struct(">Q")
_ACK = struct.Struct(">BHIHHQBB")  # frame header, 60.80, tag, multiple, frame-end
_END = 0xCE

# class/method ids as the first 4 payload bytes
_DELIVER = b"\x00\x3c\x00\x3c"
_BASIC_ACK = b"\x00\x3c\x00\x50"
_BASIC_NACK = b"\x00\x3c\x00\x78"
_BASIC_RETURN = b"\x00\x3c\x00\x32"
_BASIC_CANCEL = b"\x00\x3c\x00\x1e"
_CHANNEL_CLOSE = b"\x00\x14\x00\x28"
_CONNECTION_CLOSE = b"\x00\x0a\x00\x32"


class PerfError(Exception):
    """The broker refused something (close with a reply code) or the connection broke."""


# ---------------------------------------------------------------- URL


@dataclass(frozen=True)
class AmqpUrl:
    host: str
    port: int
    user: str
    password: str
    vhost: str

    @classmethod
    def parse(cls, url: str) -> AmqpUrl:
        u = urlsplit(url if "://" in url else "amqp://" + url)
        if u.scheme not in ("amqp", ""):
            raise ValueError(f"unsupported URL scheme {u.scheme!r} (only amqp://)")
        path = u.path[1:] if u.path.startswith("/") else u.path
        return cls(
            host=u.hostname or "127.0.0.1",
            port=u.port or 5672,
            user=unquote(u.username) if u.username is not None else "guest",
            password=unquote(u.password) if u.password is not None else "guest",
            # "amqp://h" and "amqp://h/" both mean the default vhost "/" here
            vhost=unquote(path) if path else "/",
        )

    def safe(self) -> str:
        """The URL without the password, for reports."""
        vh = self.vhost.replace("/", "%2F")
        return f"amqp://{self.user}@{self.host}:{self.port}/{vh}"


# ---------------------------------------------------------------- blocking client


class Wire:
    """One AMQP connection on a blocking socket, for setup and teardown.

    Frames are split one at a time out of `self.buf`; whatever follows the last
    frame a setup call needed stays there, so a hot loop taking over the socket
    starts with `self.buf`.
    """

    def __init__(self, url: AmqpUrl, timeout: float = 10.0, name: str = "warren perf") -> None:
        self.url = url
        self.sock = socket.create_connection((url.host, url.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.frame_max = 131072
        self.sock.sendall(PROTOCOL_HEADER)
        start = self._expect(0, spec.ConnectionStart)
        mechs = start.mechanisms
        if b"PLAIN" not in (mechs if isinstance(mechs, bytes) else mechs.encode()).split():
            raise PerfError(f"broker offers no PLAIN login (mechanisms: {mechs!r})")
        props = {
            "product": name,
            "platform": "Python",
            "capabilities": {
                "publisher_confirms": True,
                "basic.nack": True,
                "consumer_cancel_notify": True,
                "connection.blocked": True,
            },
        }
        response = b"\0" + url.user.encode() + b"\0" + url.password.encode()
        self.send(0, spec.ConnectionStartOk(props, "PLAIN", response, "en_US"))
        try:
            tune = self._expect(0, spec.ConnectionTune)
        except PerfError as exc:  # brokers may just hang up on a failed login
            raise PerfError(f"login as {url.user!r} refused ({exc})") from None
        self.frame_max = min(tune.frame_max or 131072, 131072)
        # heartbeat 0: the hot loops never stop to answer heartbeats
        self.send(0, spec.ConnectionTuneOk(tune.channel_max or 2047, self.frame_max, 0))
        self.send(0, spec.ConnectionOpen(url.vhost))
        self._expect(0, spec.ConnectionOpenOk)

    # -- framing

    def send(self, channel: int, method: spec.Method) -> None:
        self.sock.sendall(method_frame(channel, method))

    def _frame(self) -> tuple[int, int, bytes]:
        while True:
            buf = self.buf
            if len(buf) >= 7:
                ftype, channel, size = _FRAME.unpack_from(buf, 0)
                end = 7 + size
                if len(buf) > end:
                    if buf[end] != _END:
                        raise PerfError("bad frame end from broker")
                    self.buf = buf[end + 1 :]
                    return ftype, channel, buf[7:end]
            data = self.sock.recv(65536)
            if not data:
                raise PerfError("connection closed by broker")
            self.buf = buf + data

    def _expect(self, channel: int, cls: type[Any]) -> Any:
        """Read until a `cls` method arrives on `channel`; a close raises PerfError."""
        while True:
            ftype, ch, payload = self._frame()
            if ftype != 1:
                continue
            m = spec.decode_method(payload)
            if isinstance(m, spec.ConnectionClose):
                self._try(lambda: self.send(0, spec.ConnectionCloseOk()))
                raise PerfError(f"connection closed: {m.reply_code} {m.reply_text}")
            if isinstance(m, spec.ChannelClose):
                self._try(lambda ch=ch: self.send(ch, spec.ChannelCloseOk()))
                raise PerfError(f"channel closed: {m.reply_code} {m.reply_text}")
            if ch == channel and isinstance(m, cls):
                return m

    @staticmethod
    def _try(f: Any) -> None:
        try:
            f()
        except OSError:
            pass

    def call(self, channel: int, method: spec.Method, reply: type[Any]) -> Any:
        self.send(channel, method)
        return self._expect(channel, reply)

    # -- methods

    def open_channel(self, channel: int = 1) -> None:
        self.call(channel, spec.ChannelOpen(), spec.ChannelOpenOk)

    def exchange_declare(self, ch: int, name: str, kind: str, durable: bool) -> None:
        self.call(ch, spec.ExchangeDeclare(0, name, kind, False, durable),
                  spec.ExchangeDeclareOk)

    def exchange_delete(self, ch: int, name: str) -> None:
        self.call(ch, spec.ExchangeDelete(0, name), spec.ExchangeDeleteOk)

    def queue_declare(self, ch: int, name: str, durable: bool) -> None:
        self.call(ch, spec.QueueDeclare(0, name, False, durable), spec.QueueDeclareOk)

    def queue_bind(self, ch: int, queue: str, exchange: str, key: str) -> None:
        self.call(ch, spec.QueueBind(0, queue, exchange, key), spec.QueueBindOk)

    def queue_delete(self, ch: int, name: str) -> None:
        self.call(ch, spec.QueueDelete(0, name), spec.QueueDeleteOk)

    def qos(self, ch: int, prefetch: int) -> None:
        self.call(ch, spec.BasicQos(0, prefetch, False), spec.BasicQosOk)

    def consume(self, ch: int, queue: str, tag: str, no_ack: bool) -> None:
        self.call(ch, spec.BasicConsume(0, queue, tag, False, no_ack), spec.BasicConsumeOk)

    def confirm_select(self, ch: int) -> None:
        self.call(ch, spec.ConfirmSelect(), spec.ConfirmSelectOk)

    def close(self, timeout: float = 2.0) -> None:
        """connection.close and wait briefly for close-ok; never raises."""
        try:
            self.sock.settimeout(timeout)
            self.send(0, spec.ConnectionClose(spec.REPLY_SUCCESS, "bye", 0, 0))
            # deliveries may still be in flight before close-ok: skip them, within limits
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                ftype, _ch, payload = self._frame()
                if ftype == 1 and payload[:4] in (b"\x00\x0a\x00\x33", _CONNECTION_CLOSE):
                    break
        except (OSError, PerfError):
            pass
        finally:
            self.sock.close()


# ---------------------------------------------------------------- templates


def publish_template(channel: int, exchange: str, routing_key: str, size: int,
                     persistent: bool, frame_max: int) -> tuple[bytes, bytes]:
    """One complete publish (method, header and body frames) split around the 8-byte
    timestamp at the start of the body: returns (before, after)."""
    method = method_frame(channel, spec.BasicPublish(0, exchange, routing_key))
    props = spec.BasicProperties(delivery_mode=2 if persistent else 1).encode()
    body = bytes(8) + b"x" * (size - 8)
    frames = content_frames(channel, content_header_payload(60, size, props), body, frame_max)
    msg = method + b"".join(frames)
    off = len(method) + len(frames[0]) + 7  # body frame header is 7 bytes
    return msg[:off], msg[off + 8 :]


# ---------------------------------------------------------------- latency histogram

# log-linear, microseconds: exact below 256, then 128 buckets per power of two (<1% error)
HIST_BUCKETS = 256 + 48 * 128


def hist_index(us: int) -> int:
    if us < 256:
        return us if us > 0 else 0
    s = us.bit_length() - 8
    i = 256 + (s - 1) * 128 + (us >> s) - 128
    return i if i < HIST_BUCKETS else HIST_BUCKETS - 1


def hist_value(i: int) -> int:
    if i < 256:
        return i
    s = (i - 256) // 128 + 1
    m = (i - 256) % 128 + 128
    return (m << s) + (1 << s) // 2


def hist_percentiles(hist: list[int], qs: tuple[float, ...]) -> dict[str, float]:
    n = sum(hist)
    out: dict[str, float] = {}
    if not n:
        return out
    top = max(i for i, c in enumerate(hist) if c)
    for q in qs:
        target = max(1, int(-(-q * n // 1)))
        cum = 0
        for i, c in enumerate(hist):
            cum += c
            if cum >= target:
                out[f"p{round(q * 100):d}"] = float(hist_value(i))
                break
    out["max"] = float(hist_value(top))
    out["n"] = n
    return out


# ---------------------------------------------------------------- worker plumbing

# slots in the shared counter array, per client
C_PUBLISHED, C_CONFIRMED, C_NACKED, C_CONSUMED = range(4)
NSLOTS = 4
# control array: [go, stop producers, stop consumers, ready count]
K_GO, K_STOP_PUB, K_STOP_CONS, K_READY = range(4)


@dataclass
class ClientSpec:
    """What one producer or consumer does; built by the CLI, sent to a worker process."""

    index: int  # slot in the shared counters
    role: str  # "producer" | "consumer"
    url: AmqpUrl
    exchange: str = ""
    routing_key: str = ""
    queue: str = ""
    size: int = 16
    persistent: bool = False
    confirm: int = 0
    rate: float = 0.0
    count: int = 0
    prefetch: int = 0
    autoack: bool = False
    ack_every: int = 1
    batch_bytes: int = 65536


def run_worker(clients: list[ClientSpec], counters: Any, control: Any, results: Any) -> None:
    """Entry point of a worker process: connect every client, wait for go, run them
    (one thread each: the socket calls release the GIL), put one result per client."""
    import threading

    t_cpu = time.process_time()
    out: list[dict[str, Any]] = []
    runners = []
    for c in clients:
        try:
            runners.append(Producer(c, counters, control) if c.role == "producer"
                           else Consumer(c, counters, control))
        except (OSError, PerfError) as exc:
            out.append({"index": c.index, "role": c.role, "error": f"{c.role} {c.index}: {exc}"})
        finally:
            with control.get_lock():
                control[K_READY] += 1
    while not control[K_GO] and not control[K_STOP_CONS]:
        time.sleep(0.005)
    t_cpu = time.process_time()
    t_wall = time.monotonic()
    threads = [threading.Thread(target=r.run_safe, daemon=True) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu_pct = 100.0 * (time.process_time() - t_cpu) / max(time.monotonic() - t_wall, 1e-9)
    for r in runners:
        res = r.result()
        res["worker_cpu_pct"] = round(cpu_pct, 1)
        res["pid"] = os.getpid()
        out.append(res)
    for res in out:
        results.put(res)


class _Client:
    def __init__(self, c: ClientSpec, counters: Any, control: Any) -> None:
        self.c = c
        self.counters = counters
        self.control = control
        self.base = c.index * NSLOTS
        self.error: str | None = None
        self.wire = Wire(c.url, name=f"warren perf {c.role} {c.index}")
        self.wire.open_channel(1)

    def run_safe(self) -> None:
        try:
            self.run()
        except (OSError, PerfError) as exc:
            self.error = f"{self.c.role} {self.c.index}: {exc}"
        finally:
            self.wire.close()

    def run(self) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, Any]:
        raise NotImplementedError

    def _control_frame(self, payload: bytes) -> None:
        """A close from the broker: answer it and stop this client with its text."""
        cm = payload[:4]
        code, tlen = struct.unpack_from(">HB", payload, 4)
        text = payload[7 : 7 + tlen].decode(errors="replace")
        if cm == _CHANNEL_CLOSE:
            self.wire._try(lambda: self.wire.send(1, spec.ChannelCloseOk()))
            raise PerfError(f"channel closed: {code} {text}")
        self.wire._try(lambda: self.wire.send(0, spec.ConnectionCloseOk()))
        raise PerfError(f"connection closed: {code} {text}")


class Producer(_Client):
    def __init__(self, c: ClientSpec, counters: Any, control: Any) -> None:
        super().__init__(c, counters, control)
        if c.confirm:
            self.wire.confirm_select(1)
        self.pre, self.post = publish_template(1, c.exchange, c.routing_key, c.size,
                                               c.persistent, self.wire.frame_max)
        self.msg_len = len(self.pre) + 8 + len(self.post)
        self.published = 0  # whole messages handed to the kernel
        self.low = 1  # every tag below this is confirmed
        self.acked_above: set[int] = set()  # confirmed out of order, >= low
        self.nacked = 0
        self.returned = 0
        self.confirm_hist = [0] * HIST_BUCKETS
        self.pending_batches: list[tuple[int, int, int]] = []  # (last tag, send ns, count)
        self.started = self.ended = self.confirmed_at = 0.0

    def confirmed(self) -> int:
        return self.low - 1 + len(self.acked_above)

    def run(self) -> None:
        c = self.c
        sock = self.wire.sock
        sock.setblocking(False)
        counters, control, base = self.counters, self.control, self.base
        pre, post, msg_len = self.pre, self.post, self.msg_len
        per_batch = max(1, c.batch_bytes // msg_len)
        window = c.confirm
        interval_ns = int(1e9 / c.rate) if c.rate > 0 else 0
        limit = c.count
        mono = time.monotonic_ns
        pack_ts = _Q.pack
        inbuf = self.wire.buf
        self.wire.buf = b""
        out = memoryview(b"")
        out_msgs = 0  # messages in `out`, counted as published once fully written
        self.started = time.monotonic()
        start_ns = mono()
        sent_total = 0  # messages put into batches
        give_up = 0.0
        while True:
            stopping = control[K_STOP_PUB]
            if stopping and out:
                # finish the message on the wire, unless the broker stopped reading
                if not give_up:
                    give_up = time.monotonic() + 5.0
                elif time.monotonic() > give_up:
                    raise PerfError("broker stopped reading; last batch not written")
            if not out and not stopping and not (limit and sent_total >= limit):
                k = per_batch
                if window:
                    k = min(k, window - (sent_total - self.confirmed()))
                if interval_ns:
                    due = (mono() - start_ns) // interval_ns + 1 - sent_total
                    k = min(k, due)
                if limit:
                    k = min(k, limit - sent_total)
                if k > 0:
                    now = mono()
                    # one timestamp per batch: the whole batch enters the kernel at once
                    out = memoryview((pre + pack_ts(now) + post) * k)
                    out_msgs = k
                    sent_total += k
                    if window:
                        self.pending_batches.append((sent_total, now, k))
            if out:
                try:
                    n = sock.send(out)
                except BlockingIOError:
                    n = 0
                out = out[n:]
                if not out:
                    self.published += out_msgs
                    out_msgs = 0
                    counters[base + C_PUBLISHED] = self.published
            elif stopping or (limit and sent_total >= limit):
                break
            # read confirms / closes without blocking; block only when nothing to do
            wait: float = 0.0
            if out:
                writable = None
                if n == 0:
                    writable = [sock]
                    wait = 0.05
            else:
                writable = None
                if window and sent_total - self.confirmed() >= window:
                    wait = 0.05
                elif interval_ns:
                    nxt = start_ns + (sent_total) * interval_ns - mono()
                    wait = max(0.0, min(nxt / 1e9, 0.05))
            if wait:
                select.select([sock], writable or [], [], wait)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                data = None
            if data is not None:
                if not data:
                    raise PerfError("connection closed by broker")
                inbuf = self._on_data(inbuf + data)
                if window:
                    counters[base + C_CONFIRMED] = self.confirmed()
                    counters[base + C_NACKED] = self.nacked
        self.ended = time.monotonic()
        if window:  # wait for outstanding confirms, briefly
            deadline = time.monotonic() + 5.0
            while self.confirmed() < self.published and time.monotonic() < deadline:
                select.select([sock], [], [], 0.05)
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    raise PerfError("connection closed by broker")
                inbuf = self._on_data(inbuf + data)
                counters[base + C_CONFIRMED] = self.confirmed()
                counters[base + C_NACKED] = self.nacked
        self.confirmed_at = time.monotonic()
        sock.setblocking(True)

    def _on_data(self, data: bytes) -> bytes:
        pos, n = 0, len(data)
        unpack = _FRAME.unpack_from
        while n - pos >= 7:
            ftype, _ch, size = unpack(data, pos)
            end = pos + 7 + size
            if end >= n:
                break
            if ftype == 1:
                cm = data[pos + 7 : pos + 11]
                if cm == _BASIC_ACK or cm == _BASIC_NACK:
                    (tag,) = _Q.unpack_from(data, pos + 11)
                    multiple = data[pos + 19] & 1
                    if cm == _BASIC_NACK:
                        self.nacked += (tag - self.low + 1) if multiple else 1
                    self._confirm(tag, multiple)
                elif cm == _BASIC_RETURN:
                    self.returned += 1
                elif cm == _CHANNEL_CLOSE or cm == _CONNECTION_CLOSE:
                    self._control_frame(data[pos + 7 : end])
            pos = end + 1
        return data[pos:]

    def _confirm(self, tag: int, multiple: int) -> None:
        if multiple:
            if tag >= self.low:
                self.low = tag + 1
                if self.acked_above:
                    self.acked_above = {t for t in self.acked_above if t > tag}
        elif tag == self.low:
            self.low += 1
        elif tag > self.low:
            self.acked_above.add(tag)
        while self.acked_above and self.low in self.acked_above:
            self.acked_above.discard(self.low)
            self.low += 1
        done = self.low - 1
        pb = self.pending_batches
        if pb and pb[0][0] <= done:
            now_us = time.monotonic_ns() // 1000
            i = 0
            while i < len(pb) and pb[i][0] <= done:
                self.confirm_hist[hist_index(now_us - pb[i][1] // 1000)] += pb[i][2]
                i += 1
            del pb[:i]

    def result(self) -> dict[str, Any]:
        return {
            "index": self.c.index, "role": "producer", "published": self.published,
            "confirmed": self.confirmed(), "nacked": self.nacked, "returned": self.returned,
            "ended": self.ended, "confirmed_at": self.confirmed_at if self.c.confirm else 0.0,
            "confirm_hist": _sparse(self.confirm_hist), "error": self.error,
        }


class Consumer(_Client):
    def __init__(self, c: ClientSpec, counters: Any, control: Any) -> None:
        super().__init__(c, counters, control)
        if c.prefetch:
            self.wire.qos(1, c.prefetch)
        self.wire.consume(1, c.queue, f"perf-c{c.index}", c.autoack)
        self.consumed = 0
        self.hist = [0] * HIST_BUCKETS
        self.first = self.last = 0.0
        self.started = 0.0

    def run(self) -> None:
        c = self.c
        sock = self.wire.sock
        sock.settimeout(0.1)
        recv = sock.recv
        counters, control, base = self.counters, self.control, self.base
        hist = self.hist
        autoack = c.autoack
        ack_every = max(1, c.ack_every)
        unpack = _FRAME.unpack_from
        unpack_q = _Q.unpack_from
        ack = _ACK.pack
        mono = time.monotonic_ns
        consumed = 0
        unacked = 0
        last_tag = 0
        tag = 0
        remaining = 0  # body bytes still to come for the current message
        body_size = 0
        last_ts = -1
        last_i = 0
        data = self.wire.buf
        self.wire.buf = b""
        self.started = time.monotonic()
        while True:
            acks: list[bytes] = []
            now_us = mono() // 1000
            pos, n = 0, len(data)
            while n - pos >= 7:
                ftype, _ch, size = unpack(data, pos)
                end = pos + 7 + size
                if end >= n:
                    break
                if ftype == 3:
                    if remaining and remaining == body_size:  # first body frame
                        ts = unpack_q(data, pos + 7)[0] if size >= 8 else now_us * 1000
                        if ts != last_ts:
                            last_ts = ts
                            last_i = hist_index(now_us - ts // 1000)
                        hist[last_i] += 1
                        consumed += 1
                        if not autoack:
                            unacked += 1
                            last_tag = tag
                            if unacked >= ack_every:
                                acks.append(ack(1, 1, 13, 60, 80, last_tag,
                                                1 if ack_every > 1 else 0, _END))
                                unacked = 0
                    remaining -= size
                elif ftype == 1:
                    cm = data[pos + 7 : pos + 11]
                    if cm == _DELIVER:
                        (tag,) = unpack_q(data, pos + 12 + data[pos + 11])
                    elif cm == _CHANNEL_CLOSE or cm == _CONNECTION_CLOSE:
                        self._control_frame(data[pos + 7 : end])
                    elif cm == _BASIC_CANCEL:
                        raise PerfError(f"consumer cancelled by broker (queue {c.queue})")
                elif ftype == 2:
                    (body_size,) = unpack_q(data, pos + 11)
                    remaining = body_size
                    if not body_size:  # no body frame will come: count it here
                        consumed += 1
                pos = end + 1
            if acks:
                sock.sendall(b"".join(acks))
            if consumed != self.consumed:
                if not self.consumed:
                    self.first = time.monotonic()
                self.last = time.monotonic()
                self.consumed = consumed
                counters[base + C_CONSUMED] = consumed
            if control[K_STOP_CONS]:
                break
            rest = data[pos:]
            try:
                got = recv(262144)
            except TimeoutError:
                got = None
            if got is None:
                data = rest
                continue
            if not got:
                raise PerfError("connection closed by broker")
            data = rest + got if rest else got
        if unacked:
            sock.sendall(ack(1, 1, 13, 60, 80, last_tag, 1, _END))

    def result(self) -> dict[str, Any]:
        return {
            "index": self.c.index, "role": "consumer", "queue": self.c.queue,
            "consumed": self.consumed, "first": self.first, "last": self.last,
            "started": self.started, "hist": _sparse(self.hist), "error": self.error,
        }


def _sparse(hist: list[int]) -> dict[int, int]:
    return {i: c for i, c in enumerate(hist) if c}
