"""The protocol core (node/amqp/protocol.py) driven with bytes alone: no socket, no event
loop, no broker.  Every error path the raw-socket tests in tests/integration/test_errors.py
check against a running node is checked here too, at the level where it is decided; the
reply codes and texts are those RabbitMQ 3.10 sends (checked there)."""

from __future__ import annotations

import ast
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from node.amqp import events as ev
from node.amqp import protocol, spec
from node.amqp.frames import (
    PROTOCOL_HEADER,
    FrameReader,
    content_header_payload,
    encode_frame,
    method_frame,
)
from node.amqp.protocol import CHANNEL, CONNECTION, NEED_DATA, PAUSED, ConnectionCore

LIMITS = SimpleNamespace(channel_max=2047, frame_max=131072, heartbeat=60,
                         max_message_size=1000)
HEADER = b"AMQP\x00\x00\x09\x01"


def sent(core: ConnectionCore) -> list[Any]:
    """What the core has to send, decoded: methods, or (type, channel, payload)."""
    out = []
    for ftype, ch, payload in FrameReader(frame_max=0).feed(core.data_to_send()):
        out.append((ch, spec.decode_method(payload)) if ftype == 1 else (ftype, ch, payload))
    return out


def events(core: ConnectionCore, data: bytes = b"") -> list[ev.Event]:
    out = []
    first = core.receive_data(data) if data else None
    if first is not None:
        out.append(first)
    while (e := core.next_event()) not in (NEED_DATA, PAUSED):
        out.append(e)
    return out


def opened(channel_max: int = 0) -> ConnectionCore:
    """A core through the handshake (login and vhost accepted), with channel 1 open."""
    core = ConnectionCore(LIMITS, {"product": "test"})
    assert events(core, HEADER) == []
    (_, start), = sent(core)
    assert isinstance(start, spec.ConnectionStart) and start.mechanisms == b"PLAIN AMQPLAIN"
    login, = events(core, method_frame(0, spec.ConnectionStartOk(
        client_properties={}, mechanism="PLAIN", response=b"\x00guest\x00guest")))
    assert isinstance(login, ev.LoginRequested) and login.response == b"\x00guest\x00guest"
    core.accept_login()
    (_, tune), = sent(core)
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131072, 60)
    tuned, = events(core, method_frame(0, spec.ConnectionTuneOk(
        channel_max=channel_max, frame_max=131072, heartbeat=0)))
    assert isinstance(tuned, ev.Tuned) and tuned.channel_max == (channel_max or 2047)
    open_, = events(core, method_frame(0, spec.ConnectionOpen(virtual_host="/")))
    assert isinstance(open_, ev.OpenRequested) and open_.virtual_host == "/"
    core.accept_open()
    assert isinstance(sent(core)[0][1], spec.ConnectionOpenOk)
    assert [type(e) for e in events(core, method_frame(1, spec.ChannelOpen()))] == [
        ev.ChannelOpened]
    assert isinstance(sent(core)[0][1], spec.ChannelOpenOk)
    return core


def publish_frames(body: bytes, ch: int = 1, size: int | None = None) -> list[bytes]:
    return [method_frame(ch, spec.BasicPublish(exchange="x", routing_key="k", mandatory=True)),
            encode_frame(2, ch, content_header_payload(
                60, len(body) if size is None else size, b"\x00\x00")),
            *([encode_frame(3, ch, body)] if body else [])]


def protocol_error(core: ConnectionCore, data: bytes) -> tuple[int, str, int, int]:
    out = events(core, data)
    assert isinstance(out[-1], ev.ProtocolError), out
    err = out[-1].error
    assert err.closes_connection
    return err.code, err.reply_text, err.class_id, err.method_id


# --- the handshake -------------------------------------------------------------------------

def test_a_protocol_header_that_is_not_ours_gets_ours_back():
    core = ConnectionCore(LIMITS, {})
    assert [type(e) for e in events(core, b"HTTP/1.1 GET /\r\n\r\n")] == [ev.ProtocolRejected]
    assert core.data_to_send() == HEADER
    assert core.state == protocol.CLOSED


def test_the_protocol_header_may_come_in_pieces():
    core = ConnectionCore(LIMITS, {})
    for b in HEADER:
        assert events(core, bytes([b])) == []
    assert isinstance(sent(core)[0][1], spec.ConnectionStart)


def test_the_core_waits_for_the_login_decision():
    core = ConnectionCore(LIMITS, {})
    events(core, HEADER)
    core.data_to_send()
    # start-ok and (wrongly, early) tune-ok in one read: nothing past start-ok is read yet
    out = events(core, method_frame(0, spec.ConnectionStartOk(mechanism="PLAIN", response=b""))
                 + method_frame(0, spec.ConnectionTuneOk()))
    assert [type(e) for e in out] == [ev.LoginRequested]
    assert core.state == protocol.AUTHENTICATING
    core.accept_login()
    # the tune-ok waited and is read now
    assert [type(e) for e in events(core)] == [ev.Tuned]


def test_tune_ok_beyond_our_limits_is_not_allowed():
    core = ConnectionCore(LIMITS, {})
    events(core, HEADER)
    events(core, method_frame(0, spec.ConnectionStartOk(mechanism="PLAIN", response=b"")))
    core.accept_login()
    assert protocol_error(core, method_frame(0, spec.ConnectionTuneOk(
        channel_max=5000, frame_max=131072))) == (
        530, "NOT_ALLOWED - channel_max=5000 > 2047 max size", 10, 31)


def test_frames_pipelined_behind_connection_open_are_handed_over_unparsed():
    core = ConnectionCore(LIMITS, {})
    events(core, HEADER)
    events(core, method_frame(0, spec.ConnectionStartOk(mechanism="PLAIN", response=b"")))
    core.accept_login()
    events(core, method_frame(0, spec.ConnectionTuneOk(frame_max=131072)))
    behind = method_frame(1, spec.ChannelOpen()) + method_frame(1, spec.QueueDeclare(queue="q"))
    partial = method_frame(1, spec.BasicQos(prefetch_count=1))[:5]
    out = events(core, method_frame(0, spec.ConnectionOpen(virtual_host="v")) + behind + partial)
    assert [type(e) for e in out] == [ev.OpenRequested]
    assert core.release_to_owner() == behind + partial
    assert core.state == protocol.CLOSED


def test_second_connection_open_is_channel_error():
    core = opened()
    assert protocol_error(core, method_frame(0, spec.ConnectionOpen(virtual_host="/"))) == (
        504, "CHANNEL_ERROR - unexpected method in connection state running", 10, 40)


def test_channel_frame_before_connection_open_is_command_invalid():
    core = ConnectionCore(LIMITS, {})
    events(core, HEADER)
    assert protocol_error(core, method_frame(1, spec.ChannelOpen()))[0] == 503


def test_update_secret_is_answered_and_keeps_the_connection():
    core = opened()
    out = events(core, method_frame(0, spec.ConnectionUpdateSecret(new_secret=b"s",
                                                                   reason="refresh")))
    assert [type(e) for e in out] == [ev.SecretUpdated] and out[0].reason == "refresh"
    assert isinstance(sent(core)[0][1], spec.ConnectionUpdateSecretOk)
    assert core.state == protocol.OPEN


# --- frames that break the protocol --------------------------------------------------------

def test_bad_frame_end_is_frame_error():
    code, text, _, _ = protocol_error(opened(), struct.pack(">BHI", 1, 1, 4)
                                      + b"\x00\x14\x00\x28" + b"\x00")
    assert code == 501 and "frame end octet" in text


def test_frame_larger_than_frame_max_is_frame_error():
    code, text, _, _ = protocol_error(opened(), struct.pack(">BHI", 3, 1, 200000))
    assert code == 501 and "exceeds the negotiated frame_max 131072" in text


def test_content_header_without_publish_is_unexpected_frame():
    code, _, _, _ = protocol_error(opened(), encode_frame(2, 1, content_header_payload(
        60, 0, b"\x00\x00")))
    assert code == 505


def test_body_longer_than_declared_is_frame_error():
    frames = publish_frames(b"too long", size=3)
    assert protocol_error(opened(), b"".join(frames)) == (
        501, "FRAME_ERROR - content body frame exceeds remaining content size", 60, 40)


def test_a_method_where_a_content_header_belongs_is_unexpected_frame():
    frames = publish_frames(b"abc")
    core = opened()
    code, text, _, _ = protocol_error(core, frames[0] + method_frame(1, spec.BasicQos()))
    assert code == 505 and "expected content header" in text


def test_unknown_method_is_not_implemented():
    assert protocol_error(opened(), encode_frame(1, 1, struct.pack(">HH", 60, 999)))[:1] == (
        540,)


@pytest.mark.parametrize("args,shown", [(b"\x00", "<<0>>"), (b"ab", "<<97,98>>"),
                                        (b"\x00\x00\x05ab", "<<0,0,5,97,98>>")])
def test_truncated_method_is_frame_error(args, shown):
    assert protocol_error(opened(), encode_frame(1, 1, struct.pack(">HH", 50, 10) + args)) == (
        501, f"FRAME_ERROR - cannot decode {shown}", 50, 10)


def test_truncated_basic_publish_is_frame_error_too():
    # the per-message decoder (generated `unpack`) refuses what `decode` refuses
    payload = spec.BasicPublish(exchange="ex", routing_key="rk").encode()[:-3]
    code, text, cid, mid = protocol_error(opened(), encode_frame(1, 1, payload))
    assert (code, cid, mid) == (501, 60, 40) and text.startswith("FRAME_ERROR - cannot decode")


def test_method_on_unopened_channel_is_channel_error():
    assert protocol_error(opened(), method_frame(7, spec.QueueDeclare(queue="x")))[:2] == (
        504, "CHANNEL_ERROR - expected 'channel.open' on channel 7")


def test_second_channel_open_is_channel_error():
    assert protocol_error(opened(), method_frame(1, spec.ChannelOpen()))[:2] == (
        504, "CHANNEL_ERROR - second 'channel.open' seen")


def test_heartbeat_on_a_channel_is_frame_error():
    assert protocol_error(opened(), encode_frame(8, 3, b""))[0] == 501


def test_channel_max_counts_open_channels_not_numbers():
    core = opened(channel_max=2)
    assert [type(e) for e in events(core, method_frame(5, spec.ChannelOpen()))] == [
        ev.ChannelOpened]
    assert protocol_error(core, method_frame(6, spec.ChannelOpen()))[:2] == (
        530, "NOT_ALLOWED - number of channels opened (2) has reached the negotiated "
        "channel_max (2)")


def test_nothing_is_read_after_a_protocol_error():
    core = opened()
    out = events(core, encode_frame(1, 1, struct.pack(">HH", 60, 999))
                 + method_frame(1, spec.BasicQos()))
    assert [type(e) for e in out] == [ev.ProtocolError]
    assert events(core, method_frame(1, spec.BasicQos())) == []


# --- messages ------------------------------------------------------------------------------

@pytest.mark.parametrize("split", [None, 1, 7, 13])
def test_a_message_is_one_publish_however_its_bytes_arrive(split):
    body = b"hello world"
    data = b"".join(publish_frames(body))
    core = opened()
    if split is None:
        out = events(core, data)
    else:
        out = []
        for i in range(0, len(data), split):
            out += events(core, data[i:i + split])
    p, = out
    assert isinstance(p, ev.Publish)
    assert (p.channel, p.exchange, p.routing_key, p.mandatory, p.immediate, p.body) == (
        1, "x", "k", True, False, body)
    assert p.header == content_header_payload(60, len(body), b"\x00\x00")


def test_a_body_in_several_frames_is_joined():
    frames = publish_frames(b"", size=6)
    core = opened()
    out = events(core, frames[0] + frames[1] + encode_frame(3, 1, b"abc")
                 + encode_frame(3, 1, b"def"))
    assert [p.body for p in out] == [b"abcdef"]  # type: ignore[attr-defined]


def test_an_empty_message_has_no_body_frame():
    out = events(opened(), b"".join(publish_frames(b"")))
    assert [(type(p), p.body) for p in out] == [(ev.Publish, b"")]  # type: ignore[attr-defined]


def test_a_message_over_the_limit_is_refused_in_order_and_its_body_skipped():
    core = opened()
    data = (method_frame(1, spec.BasicQos(prefetch_count=3))
            + b"".join(publish_frames(b"x" * 1500))
            + method_frame(1, spec.BasicQos(prefetch_count=4)))
    out = events(core, data)
    assert [type(e) for e in out] == [ev.MethodReceived, ev.ContentRejected, ev.MethodReceived]
    err = out[1].error  # type: ignore[attr-defined]
    assert (err.code, err.reply_text, err.closes_connection) == (
        406, "PRECONDITION_FAILED - message size 1500 is larger than configured max size 1000",
        False)


def test_interleaved_channels_assemble_separately():
    core = opened()
    events(core, method_frame(2, spec.ChannelOpen()))
    a, b = publish_frames(b"aaa", ch=1), publish_frames(b"bb", ch=2)
    out = events(core, a[0] + b[0] + a[1] + b[1] + b[2] + a[2])
    assert [(p.channel, p.body) for p in out] == [(2, b"bb"), (1, b"aaa")]  # type: ignore


# --- closing -------------------------------------------------------------------------------

def test_client_channel_close_is_confirmed_by_the_broker():
    core = opened()
    out = events(core, method_frame(1, spec.ChannelClose(reply_code=200)))
    assert [type(e) for e in out] == [ev.ChannelCloseReceived]
    assert core.data_to_send() == b""  # the broker answers what came before first
    core.channel_close_ok(1)
    assert isinstance(sent(core)[0][1], spec.ChannelCloseOk)
    assert 1 not in core.channels


def test_after_our_channel_close_only_close_ok_counts():
    core = opened()
    from node.amqp.errors import ChannelError
    core.close_channel(1, ChannelError(404, "no queue 'q'", 50, 10))
    (_, close), = sent(core)
    assert (close.reply_code, close.reply_text, close.class_id) == (
        404, "NOT_FOUND - no queue 'q'", 50)
    assert events(core, b"".join(publish_frames(b"late"))
                  + method_frame(1, spec.BasicQos())) == []
    out = events(core, method_frame(1, spec.ChannelCloseOk()))
    assert [type(e) for e in out] == [ev.ChannelClosed] and 1 not in core.channels


def test_client_connection_close_is_answered_at_once():
    core = opened()
    out = events(core, method_frame(0, spec.ConnectionClose(reply_code=200, reply_text="bye")))
    assert [type(e) for e in out] == [ev.ConnectionCloseReceived]
    assert isinstance(sent(core)[0][1], spec.ConnectionCloseOk)
    assert core.state == protocol.CLOSED


def test_our_connection_close_waits_for_close_ok():
    from node.amqp.errors import AMQPConnectionError
    core = opened()
    assert core.close(AMQPConnectionError(320, "shutdown"))
    assert not core.close(AMQPConnectionError(320, "again"))
    assert isinstance(sent(core)[0][1], spec.ConnectionClose)
    assert events(core, method_frame(1, spec.BasicQos())) == []
    out = events(core, method_frame(0, spec.ConnectionCloseOk()))
    assert [type(e) for e in out] == [ev.ConnectionClosed] and core.state == protocol.CLOSED


# --- the tables and the layering -----------------------------------------------------------

def test_every_state_is_reachable_in_the_tables():
    assert {s for (s, _) in CONNECTION} | set(CONNECTION.values()) == set(protocol.State)
    assert {s for (s, _) in CHANNEL} == set(protocol.ChannelState)


def test_the_protocol_core_does_no_io():
    root = Path(__file__).resolve().parents[2] / "node" / "amqp"
    banned = {"asyncio", "socket", "selectors", "ssl", "uvloop"}
    for name in ("protocol.py", "events.py", "frames.py", "fields.py", "spec.py"):
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for mod in mods:
                assert mod.split(".")[0] not in banned, f"{name} imports {mod}"
                # nor anything of the broker that does I/O (channels, stores, the cluster)
                assert not mod.startswith(("node.clients.connection", "node.clients.channel",
                                           "node.runtime", "storage", "cluster")), (name, mod)


# --- found in review: ordering around closes -----------------------------------------------

def test_an_error_behind_the_clients_channel_close_still_reaches_it():
    # queue.declare waits for Raft, the client's channel.close waits behind it, then the
    # declare fails: the client gets channel.close with the error, as before the core
    from node.amqp.errors import ChannelError
    core = opened()
    assert [type(e) for e in events(core, method_frame(1, spec.ChannelClose()))] == [
        ev.ChannelCloseReceived]
    core.close_channel(1, ChannelError(406, "inequivalent arg 'durable'", 50, 10))
    (_, close), = sent(core)
    assert isinstance(close, spec.ChannelClose) and close.reply_code == 406
    core.channel_close_ok(1)  # the waiting close, replayed later: nothing more is sent
    assert core.data_to_send() == b""
    out = events(core, method_frame(1, spec.ChannelCloseOk()))
    assert [type(e) for e in out] == [ev.ChannelClosed] and 1 not in core.channels


def test_nothing_but_close_ok_follows_connection_close():
    from node.amqp.errors import AMQPConnectionError
    core = opened()
    core.close(AMQPConnectionError(505, "unexpected frame"))
    core.send_method(1, spec.QueueDeclareOk(queue="q"))  # a Raft change finishing late
    core.send_content(1, b"\x00\x3c\x00\x3c", b"h" * 14, b"body")
    assert [type(m) for _, m in sent(core)] == [spec.ConnectionClose]


def test_the_clients_close_after_a_bad_frame_is_still_answered():
    core = opened()
    out = events(core, encode_frame(1, 1, struct.pack(">HH", 60, 999))
                 + method_frame(0, spec.ConnectionClose(reply_code=200)))
    assert [type(e) for e in out] == [ev.ProtocolError]
    core.close(out[0].error)  # type: ignore[attr-defined]
    assert [type(e) for e in events(core)] == [ev.ConnectionCloseReceived]
    assert [type(m) for _, m in sent(core)] == [spec.ConnectionClose, spec.ConnectionCloseOk]


def test_a_bad_frame_while_closing_does_not_hide_the_close_ok():
    from node.amqp.errors import AMQPConnectionError
    core = opened()
    core.close(AMQPConnectionError(320, "shutdown"))
    out = events(core, encode_frame(1, 1, struct.pack(">HH", 60, 999))
                 + method_frame(0, spec.ConnectionCloseOk()))
    assert [type(e) for e in out] == [ev.ConnectionClosed]


def test_repeated_and_changing_publish_arguments_on_one_channel():
    # the core remembers the last basic.publish bytes per channel: a change must show
    core = opened()

    def one(exchange: str, key: str, mandatory: bool) -> bytes:
        return (method_frame(1, spec.BasicPublish(exchange=exchange, routing_key=key,
                                                  mandatory=mandatory))
                + encode_frame(2, 1, content_header_payload(60, 1, b"\x00\x00"))
                + encode_frame(3, 1, b"b"))
    sends = [("x", "a", False), ("x", "a", False), ("x", "b", False), ("x", "b", True),
             ("y", "b", True), ("x", "a", False)]
    out = events(core, b"".join(one(*s) for s in sends))
    assert [(p.exchange, p.routing_key, p.mandatory) for p in out] == sends  # type: ignore


def test_need_data_and_paused_are_distinct_answers() -> None:
    core = ConnectionCore(LIMITS, {})
    assert core.next_event() is NEED_DATA  # not even a protocol header yet
    e = events(core, PROTOCOL_HEADER + method_frame(0, spec.ConnectionStartOk(
        client_properties={}, mechanism="PLAIN", response=b"\x00guest\x00guest",
        locale="en_US")))
    assert any(isinstance(x, ev.LoginRequested) for x in e)
    # the broker has not decided on the login: the core reads nothing meanwhile
    assert core.next_event() is PAUSED
    core.accept_login()
    assert core.next_event() is NEED_DATA


def test_a_pair_no_table_lists_is_a_protocol_error_not_a_key_error() -> None:
    from node.amqp.errors import AMQPConnectionError
    from node.amqp.states import CH_CLOSING, CLOSED, transition
    with pytest.raises(AMQPConnectionError) as e:
        transition(CONNECTION, CLOSED, "connection.open")
    assert e.value.code == 503 and "closed" in e.value.text
    with pytest.raises(AMQPConnectionError):
        transition(CHANNEL, CH_CLOSING, "basic.publish")
