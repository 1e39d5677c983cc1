"""Bad input gets RabbitMQ's reply code and a readable text, and nothing else is disturbed."""

from __future__ import annotations

import socket
import struct
import time

import pika
import pytest
from pika.exceptions import (
    ChannelClosedByBroker,
    ConnectionClosedByBroker,
    ProbableAuthenticationError,
)


def closed_code(fn) -> tuple[int, str]:
    with pytest.raises((ChannelClosedByBroker, ConnectionClosedByBroker)) as e:
        fn()
    return e.value.reply_code, e.value.reply_text


def test_passive_declare_missing_queue_404(conn):
    ch = conn.channel()
    code, text = closed_code(lambda: ch.queue_declare("no-such-queue", passive=True))
    assert code == 404
    assert text == "NOT_FOUND - no queue 'no-such-queue' in vhost '/'"
    assert conn.is_open  # a channel error leaves the connection alone


def test_passive_declare_missing_exchange_404(conn):
    ch = conn.channel()
    code, text = closed_code(lambda: ch.exchange_declare("nope", passive=True))
    assert (code, text) == (404, "NOT_FOUND - no exchange 'nope' in vhost '/'")


def test_publish_to_missing_exchange_closes_channel(conn):
    ch = conn.channel()
    ch.basic_publish("no-such-exchange", "k", b"x")
    code, text = closed_code(lambda: ch.queue_declare("", exclusive=True))
    assert code == 404 and "no exchange 'no-such-exchange'" in text


def test_inequivalent_queue_redeclare_406(conn):
    ch = conn.channel()
    ch.queue_declare("ineq", durable=False)
    code, text = closed_code(lambda: ch.queue_declare("ineq", durable=True))
    assert code == 406
    assert text == ("PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'ineq' in "
                    "vhost '/': received 'true' but current is 'false'")
    ch = conn.channel()
    ch.queue_declare("ineq_args", arguments={"x-max-length": 10})
    code, text = closed_code(lambda: ch.queue_declare("ineq_args",
                                                      arguments={"x-max-length": 20}))
    assert code == 406 and "inequivalent arg 'x-max-length'" in text
    ch = conn.channel()
    ch.queue_delete("ineq")
    ch.queue_delete("ineq_args")


def test_inequivalent_exchange_redeclare_406(conn):
    ch = conn.channel()
    ch.exchange_declare("ineq_x", exchange_type="direct")
    code, text = closed_code(lambda: ch.exchange_declare("ineq_x", exchange_type="fanout"))
    assert code == 406 and "inequivalent arg 'type' for exchange 'ineq_x'" in text
    conn.channel().exchange_delete("ineq_x")


def test_exclusive_queue_locked_for_other_connection(node, conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    other = pika.BlockingConnection(pika.URLParameters(node.url))
    try:
        och = other.channel()
        code, text = closed_code(lambda: och.basic_consume(q, lambda *a: None))
        assert code == 405 and "cannot obtain exclusive access to locked queue" in text
        och = other.channel()
        code, _ = closed_code(lambda: och.queue_declare(q, passive=True))
        assert code == 405
    finally:
        other.close()


def test_exclusive_queue_deleted_with_connection(node, conn):
    other = pika.BlockingConnection(pika.URLParameters(node.url))
    q = other.channel().queue_declare("", exclusive=True).method.queue
    other.close()
    time.sleep(0.1)
    ch = conn.channel()
    code, _ = closed_code(lambda: ch.queue_declare(q, passive=True))
    assert code == 404


def test_reserved_amq_prefix_403(conn):
    ch = conn.channel()
    code, text = closed_code(lambda: ch.queue_declare("amq.mine"))
    assert code == 403 and "reserved prefix 'amq.*'" in text
    ch = conn.channel()
    code, _ = closed_code(lambda: ch.exchange_declare("amq.mine", exchange_type="direct"))
    assert code == 403


def test_unknown_delivery_tag_406(conn):
    ch = conn.channel()
    ch.basic_ack(999)
    code, text = closed_code(lambda: ch.queue_declare("", exclusive=True))
    assert (code, text) == (406, "PRECONDITION_FAILED - unknown delivery tag 999")


def test_unknown_exchange_type_is_command_invalid(node):
    c = pika.BlockingConnection(pika.URLParameters(node.url))
    ch = c.channel()
    code, text = closed_code(lambda: ch.exchange_declare("weird", exchange_type="x-nope"))
    assert code == 503 and "unknown exchange type 'x-nope'" in text


def test_bad_credentials_refused(node):
    params = pika.URLParameters(f"amqp://guest:wrong@127.0.0.1:{node.amqp_port}/%2F")
    with pytest.raises(ProbableAuthenticationError) as e:
        pika.BlockingConnection(params)
    assert "ACCESS_REFUSED" in str(e.value)


def test_missing_vhost_not_allowed(node):
    params = pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{node.amqp_port}/nope")
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
        pika.BlockingConnection(params)
    assert "(530) \"NOT_ALLOWED - access to vhost 'nope' refused for user 'guest'\"" in str(e.value)


# --- raw socket tests: malformed frames ---------------------------------------------------

class RawClient:
    """A minimal hand-driven AMQP client for sending malformed frames."""

    def __init__(self, node) -> None:
        from node.amqp.frames import FrameReader
        self.sock = socket.create_connection(("127.0.0.1", node.amqp_port), timeout=5)
        self.reader = FrameReader(frame_max=131072)
        self.pending: list = []

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_method(self):
        from node.amqp import spec
        while True:
            while self.pending:
                ftype, _ch, payload = self.pending.pop(0)
                if ftype == 1:
                    return spec.decode_method(payload)
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("server closed the socket")
            self.pending.extend(self.reader.feed(data))

    def close(self) -> None:
        self.sock.close()


def raw_open(node, heartbeat: int = 0, channel_max: int = 0) -> RawClient:
    """Handshake as a minimal client: PLAIN guest/guest, vhost /, no heartbeat."""
    from node.amqp import spec
    from node.amqp.frames import method_frame

    s = RawClient(node)
    s.sendall(b"AMQP\x00\x00\x09\x01")
    assert isinstance(s.read_method(), spec.ConnectionStart)
    s.sendall(method_frame(0, spec.ConnectionStartOk(
        client_properties={"capabilities": {"authentication_failure_close": True,
                                            "consumer_cancel_notify": True}},
        mechanism="PLAIN", response=b"\x00guest\x00guest", locale="en_US")))
    tune = s.read_method()
    assert isinstance(tune, spec.ConnectionTune)
    s.sendall(method_frame(0, spec.ConnectionTuneOk(channel_max=channel_max or tune.channel_max,
                                                    frame_max=tune.frame_max, heartbeat=heartbeat)))
    s.sendall(method_frame(0, spec.ConnectionOpen(virtual_host="/")))
    assert isinstance(s.read_method(), spec.ConnectionOpenOk)
    s.sendall(method_frame(1, spec.ChannelOpen()))
    assert isinstance(s.read_method(), spec.ChannelOpenOk)
    return s


def expect_close(s: RawClient) -> tuple[int, str]:
    from node.amqp import spec
    m = s.read_method()
    assert isinstance(m, (spec.ConnectionClose, spec.ChannelClose)), m
    return m.reply_code, m.reply_text


def test_bad_protocol_header_gets_ours_back(node):
    s = socket.create_connection(("127.0.0.1", node.amqp_port), timeout=5)
    s.sendall(b"HTTP/1.1 GET /\r\n\r\n")
    assert s.recv(8) == b"AMQP\x00\x00\x09\x01"
    assert s.recv(8) == b""  # and the socket is closed
    s.close()


def test_bad_frame_end_is_frame_error(node):
    s = raw_open(node)
    s.sendall(struct.pack(">BHI", 1, 1, 4) + b"\x00\x14\x00\x28" + b"\x00")
    code, text = expect_close(s)
    assert code == 501
    s.close()


def test_frame_larger_than_frame_max_is_frame_error(node):
    s = raw_open(node)
    s.sendall(struct.pack(">BHI", 3, 1, 200000) + b"\x00" * 200000 + b"\xce")
    code, _ = expect_close(s)
    assert code == 501
    s.close()


def test_content_header_without_publish_is_unexpected_frame(node):
    s = raw_open(node)
    from node.amqp.frames import content_header_payload, encode_frame
    s.sendall(encode_frame(2, 1, content_header_payload(60, 0, b"\x00\x00")))
    code, _ = expect_close(s)
    assert code == 505
    s.close()


def test_body_longer_than_declared_is_frame_error(node):
    from node.amqp import spec
    from node.amqp.frames import content_header_payload, encode_frame, method_frame
    s = raw_open(node)
    s.sendall(method_frame(1, spec.BasicPublish(exchange="", routing_key="x"))
              + encode_frame(2, 1, content_header_payload(60, 3, b"\x00\x00"))
              + encode_frame(3, 1, b"too long"))
    code, text = expect_close(s)
    assert code == 501 and "exceeds remaining content size" in text
    s.close()


def test_unknown_method_is_not_implemented(node):
    from node.amqp.frames import encode_frame
    s = raw_open(node)
    s.sendall(encode_frame(1, 1, struct.pack(">HH", 60, 999)))
    code, _ = expect_close(s)
    assert code == 540
    s.close()


@pytest.mark.parametrize("args,shown", [(b"\x00", "<<0>>"), (b"ab", "<<97,98>>"),
                                        (b"\x00\x00\x05ab", "<<0,0,5,97,98>>")])
def test_truncated_method_is_frame_error(node, args, shown):
    # RabbitMQ 3.10: 501 with the undecodable argument bytes printed as an Erlang binary
    from node.amqp.frames import encode_frame
    s = raw_open(node)
    s.sendall(encode_frame(1, 1, struct.pack(">HH", 50, 10) + args))  # queue.declare, cut
    assert expect_close(s) == (501, f"FRAME_ERROR - cannot decode {shown}")
    s.close()


def test_method_on_unopened_channel_is_channel_error(node):
    from node.amqp import spec
    from node.amqp.frames import method_frame
    s = raw_open(node)
    s.sendall(method_frame(7, spec.QueueDeclare(queue="x")))
    code, _ = expect_close(s)
    assert code == 504
    s.close()


def test_channel_max_enforced(node):
    # RabbitMQ 3.10 limits how many channels are open, and says how many are
    from node.amqp import spec
    from node.amqp.frames import method_frame
    s = raw_open(node, channel_max=2)
    s.sendall(method_frame(2, spec.ChannelOpen()))
    assert isinstance(s.read_method(), spec.ChannelOpenOk)
    s.sendall(method_frame(3, spec.ChannelOpen()))
    assert expect_close(s) == (530, "NOT_ALLOWED - number of channels opened (2) has reached "
                                    "the negotiated channel_max (2)")
    s.close()


def test_channel_number_above_channel_max_is_opened(node):
    # RabbitMQ 3.10 checks the count of open channels, not the number
    from node.amqp import spec
    from node.amqp.frames import method_frame
    s = raw_open(node, channel_max=2)
    s.sendall(method_frame(5, spec.ChannelOpen()))
    assert isinstance(s.read_method(), spec.ChannelOpenOk)
    s.close()


def test_other_clients_undisturbed_by_bad_one(node, conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    s = raw_open(node)
    s.sendall(b"\x01\x00\x01garbage-garbage-garbage")
    s.close()
    ch.basic_publish("", q, b"still here")
    assert ch.basic_get(q, auto_ack=True)[2] == b"still here"


def test_message_larger_than_limit_refused(node, tmp_path):
    from node.amqp import spec
    from node.amqp.frames import content_header_payload, encode_frame, method_frame
    s = raw_open(node)
    s.sendall(method_frame(1, spec.BasicPublish(exchange="", routing_key="x"))
              + encode_frame(2, 1, content_header_payload(60, 1 << 30, b"\x00\x00")))
    code, text = expect_close(s)
    assert code == 406 and "larger than configured max size" in text
    s.close()


def test_immediate_publish_not_implemented(node):
    from node.amqp import spec
    from node.amqp.frames import content_header_payload, encode_frame, method_frame
    s = raw_open(node)
    s.sendall(method_frame(1, spec.BasicPublish(exchange="", routing_key="x", immediate=True))
              + encode_frame(2, 1, content_header_payload(60, 1, b"\x00\x00"))
              + encode_frame(3, 1, b"x"))
    code, text = expect_close(s)
    assert (code, text) == (540, "NOT_IMPLEMENTED - immediate=true")
    s.close()


def test_server_chosen_consumer_tag(node):
    from node.amqp import spec
    from node.amqp.frames import method_frame
    s = raw_open(node)
    s.sendall(method_frame(1, spec.QueueDeclare(queue="", exclusive=True)))
    q = s.read_method().queue
    s.sendall(method_frame(1, spec.BasicConsume(queue=q, consumer_tag="")))
    ok = s.read_method()
    assert isinstance(ok, spec.BasicConsumeOk) and ok.consumer_tag.startswith("amq.ctag-")
    s.close()


def test_heartbeats_sent_and_silent_peer_dropped(node):
    s = raw_open(node, heartbeat=1)
    s.sock.settimeout(10)
    start = time.monotonic()
    heartbeats = 0
    closed_after = None
    while time.monotonic() - start < 8:
        data = s.sock.recv(65536)
        if not data:
            closed_after = time.monotonic() - start
            break
        heartbeats += sum(1 for f in s.reader.feed(data) if f[0] == 8)
    assert heartbeats >= 1  # the server sends heartbeats at half the timeout
    assert closed_after is not None and closed_after < 5  # silent for 2 intervals: dropped
    s.close()


def test_heartbeating_peer_stays_connected(node):
    from node.amqp.frames import HEARTBEAT_FRAME
    s = raw_open(node, heartbeat=1)
    s.sock.settimeout(0.5)
    for _ in range(8):
        s.sendall(HEARTBEAT_FRAME)
        try:
            assert s.sock.recv(65536) != b""
        except socket.timeout:
            pass
    from node.amqp import spec
    from node.amqp.frames import method_frame
    s.sendall(method_frame(1, spec.QueueDeclare(queue="", exclusive=True)))
    s.sock.settimeout(5)
    assert isinstance(s.read_method(), spec.QueueDeclareOk)
    s.close()


def test_second_connection_open_is_channel_error(node):
    # RabbitMQ 3.10: any connection method out of place is 504 naming the state
    from node.amqp import spec
    from node.amqp.frames import method_frame
    s = raw_open(node)
    s.sendall(method_frame(0, spec.ConnectionOpen(virtual_host="/")))
    assert expect_close(s) == (504, "CHANNEL_ERROR - unexpected method in connection state "
                                    "running")
    s.close()


def test_update_secret_keeps_the_connection(node):
    # RabbitMQ 3.10's internal backend answers update-secret-ok and keeps the connection
    from node.amqp import spec
    from node.amqp.frames import method_frame
    s = raw_open(node)
    s.sendall(method_frame(0, spec.ConnectionUpdateSecret(new_secret=b"guest",
                                                          reason="token refresh")))
    assert isinstance(s.read_method(), spec.ConnectionUpdateSecretOk)
    s.sendall(method_frame(2, spec.ChannelOpen()))
    assert isinstance(s.read_method(), spec.ChannelOpenOk)
    s.close()


def test_client_close_leaves_the_socket_to_the_client(node):
    # RabbitMQ sends close-ok and waits for the client to hang up (aiormq relies on it)
    from node.amqp import spec
    from node.amqp.frames import method_frame
    s = raw_open(node)
    s.sendall(method_frame(0, spec.ConnectionClose(reply_code=200, reply_text="bye",
                                                   class_id=0, method_id=0)))
    assert isinstance(s.read_method(), spec.ConnectionCloseOk)
    s.sock.settimeout(0.5)
    with pytest.raises(socket.timeout):
        s.sock.recv(1)  # still open: no EOF
    s.close()


def test_queue_delete_ok_comes_before_the_consumer_cancel(node):
    # RabbitMQ: delete-ok, then basic.cancel for this channel's consumer (py-amqp needs it)
    from node.amqp import spec
    from node.amqp.frames import method_frame
    s = raw_open(node)
    s.sendall(method_frame(1, spec.QueueDeclare(queue="del-order", exclusive=True)))
    assert isinstance(s.read_method(), spec.QueueDeclareOk)
    s.sendall(method_frame(1, spec.BasicConsume(queue="del-order", consumer_tag="ct")))
    assert isinstance(s.read_method(), spec.BasicConsumeOk)
    s.sendall(method_frame(1, spec.QueueDelete(queue="del-order")))
    assert isinstance(s.read_method(), spec.QueueDeleteOk)
    cancel = s.read_method()
    assert isinstance(cancel, spec.BasicCancel) and cancel.consumer_tag == "ct"
    s.close()
