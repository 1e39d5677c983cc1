"""Generated method classes and content properties (node/amqp/spec.py), checked for
round trips and byte-for-byte against pika's independent implementation."""

from __future__ import annotations

import inspect
import itertools
import random
import struct
from typing import Any

import pika.spec
import pytest

from node.amqp import spec
from node.amqp.fields import AMQPSyntaxError, UnknownMethod, encode_table

ALL_METHODS = sorted(spec.METHODS.values(), key=lambda c: c.INDEX)


def pika_class(cls: type[spec.Method]) -> Any:
    """pika's class for the same method, e.g. pika.spec.Basic.Publish."""
    class_name, method_name = cls.NAME.split(".")
    container = getattr(pika.spec, class_name.capitalize())
    return getattr(container, "".join(p.capitalize() for p in method_name.split("-")))


def sample_args(cls: type[spec.Method], bits: int = 0b0101_0101) -> list[Any]:
    """Non-default values for every argument, distinct per position so that a swapped
    field shows up; `bits` chooses which bit arguments are set."""
    values: list[Any] = []
    if not cls.__slots__:
        return values
    params = inspect.signature(cls.__init__).parameters
    for i, p in enumerate(params[name] for name in cls.__slots__):
        if p.default is False:
            values.append(bool(bits >> (i % 8) & 1))
        elif p.default == 0:
            values.append(100 + i)  # fits octet, short, long and longlong
        elif p.default == "":
            values.append(f"s{i}-ü")
        elif p.default == b"":
            values.append(bytes([i, 0, 255]) + b"blob")
        elif p.default is None:  # tables
            values.append({"k": f"v{i}", "n": i, "nested": {"l": [1, True]}})
        else:  # pragma: no cover - a new argument type needs a sample here
            raise AssertionError(f"no sample for {cls.__name__}.{p.name}")
    return values


def test_method_inventory():
    # the XML's 60 plus connection.blocked, unblocked, update-secret, update-secret-ok
    assert len(spec.METHODS) == 64
    for index, cls in spec.METHODS.items():
        assert index == cls.INDEX == (cls.CLASS_ID << 16) | cls.METHOD_ID
        assert cls.__name__ == "".join(
            part.capitalize() for part in cls.NAME.replace(".", "-").split("-")
        )
        assert spec.CLASS_NAMES[cls.CLASS_ID] == cls.NAME.split(".")[0]
        for response in cls.RESPONSES:
            assert hasattr(spec, response), f"{cls.__name__} response {response} missing"
        assert isinstance(cls.SYNCHRONOUS, bool) and isinstance(cls.HAS_CONTENT, bool)


def test_selected_metadata():
    assert spec.BasicPublish.INDEX == 0x003C0028
    assert spec.BasicPublish.NAME == "basic.publish"
    assert spec.BasicPublish.HAS_CONTENT and not spec.BasicPublish.SYNCHRONOUS
    assert spec.BasicGet.RESPONSES == ("BasicGetOk", "BasicGetEmpty")
    assert spec.ConnectionStart.RESPONSES == ("ConnectionStartOk",)
    assert spec.ExchangeUnbindOk.METHOD_ID == 51  # 51, not 41, in RabbitMQ's extension
    assert spec.BasicNack.__slots__ == ("delivery_tag", "multiple", "requeue")
    assert "nowait" in spec.QueueDeclare.__slots__  # XML says no-wait; one name everywhere
    assert "nowait" in spec.ConfirmSelect.__slots__
    assert "global_" in spec.BasicQos.__slots__  # 'global' is a Python keyword
    assert spec.BasicConsume.__slots__ == (
        "reserved_1",
        "queue",
        "consumer_tag",
        "no_local",
        "no_ack",
        "exclusive",
        "nowait",
        "arguments",
    )


@pytest.mark.parametrize("cls", ALL_METHODS, ids=lambda c: c.NAME)
@pytest.mark.parametrize("bits", [0b0101_0101, 0b1010_1010, 0xFF])
def test_every_method_roundtrips(cls, bits):
    method = cls(*sample_args(cls, bits))
    payload = method.encode()
    assert payload[:4] == struct.pack(">HH", cls.CLASS_ID, cls.METHOD_ID)
    decoded = spec.decode_method(payload)
    assert type(decoded) is cls
    assert decoded == method
    # Decoding at an offset inside a larger buffer, from a memoryview.
    assert cls.decode(memoryview(b"junk" + payload + b"tail"), 8) == method


@pytest.mark.parametrize("cls", ALL_METHODS, ids=lambda c: c.NAME)
@pytest.mark.parametrize("bits", [0b0101_0101, 0b1010_1010])
def test_every_method_matches_pika_bytes(cls, bits):
    args = sample_args(cls, bits)
    ours = cls(*args).encode()
    theirs = pika_class(cls)(*args)
    assert ours == struct.pack(">I", theirs.INDEX) + b"".join(theirs.encode())


def test_defaults_encode_like_pika_defaults_where_pika_has_them():
    assert spec.BasicAck().encode() == b"\x00\x3c\x00\x50" + b"\x00" * 9
    assert spec.ChannelOpen().encode() == b"\x00\x14\x00\x0a\x00"
    assert spec.ConnectionTuneOk(2047, 131072, 60).encode() == struct.pack(
        ">HHHIH", 10, 31, 2047, 131072, 60
    )


def test_pika_examples_byte_for_byte():
    cases = [
        (
            spec.BasicPublish(exchange="amq.topic", routing_key="a.b", mandatory=True),
            pika.spec.Basic.Publish(exchange="amq.topic", routing_key="a.b", mandatory=True),
        ),
        (
            spec.BasicDeliver("ctag", 2**40, True, "ex", "rk"),
            pika.spec.Basic.Deliver("ctag", 2**40, True, "ex", "rk"),
        ),
        (
            spec.QueueDeclare(
                queue="jobs", durable=True, arguments={"x-queue-type": "quorum", "x-max": 10}
            ),
            pika.spec.Queue.Declare(
                queue="jobs", durable=True, arguments={"x-queue-type": "quorum", "x-max": 10}
            ),
        ),
        (
            spec.ConnectionStart(
                0,
                9,
                {"product": "WarrenMQ", "capabilities": {"publisher_confirms": True}},
                b"PLAIN AMQPLAIN",
                b"en_US",
            ),
            pika.spec.Connection.Start(
                0,
                9,
                {"product": "WarrenMQ", "capabilities": {"publisher_confirms": True}},
                "PLAIN AMQPLAIN",
                "en_US",
            ),
        ),
        (spec.BasicQos(0, 10, True), pika.spec.Basic.Qos(0, 10, True)),
        (spec.ConfirmSelect(nowait=True), pika.spec.Confirm.Select(nowait=True)),
    ]
    for ours, theirs in cases:
        assert ours.encode() == struct.pack(">I", theirs.INDEX) + b"".join(theirs.encode())


def test_decodes_what_pika_encodes():
    theirs = pika.spec.Basic.Consume(
        queue="q", consumer_tag="c", no_ack=True, exclusive=True, arguments={"x-priority": 5}
    )
    payload = struct.pack(">I", theirs.INDEX) + b"".join(theirs.encode())
    ours = spec.decode_method(payload)
    assert ours == spec.BasicConsume(
        queue="q", consumer_tag="c", no_ack=True, exclusive=True, arguments={"x-priority": 5}
    )


def test_longstr_accepts_str_and_decodes_bytes():
    payload = spec.ConnectionStartOk({}, "PLAIN", "\x00guest\x00guest", "en_US").encode()
    decoded = spec.decode_method(payload)
    assert decoded.response == b"\x00guest\x00guest"
    assert isinstance(decoded.mechanism, str)


def test_defaults_repr_eq():
    a, b = spec.QueueDeclare(), spec.QueueDeclare()
    assert a.arguments == {} and a.arguments is not b.arguments
    assert a == b and a != spec.QueueDeclare(queue="x")
    assert a != spec.QueueDelete()
    assert repr(spec.BasicAck(5, True)) == "BasicAck(delivery_tag=5, multiple=True)"
    assert repr(spec.TxSelect()) == "TxSelect()"


def test_bits_pack_lsb_first():
    payload = spec.ExchangeDeclare(passive=False, durable=True, internal=True).encode()
    # reserved-1, exchange "", type "", then one octet: durable=bit 1, internal=bit 3.
    assert payload[4:] == b"\x00\x00" + b"\x00" + b"\x00" + b"\x0a" + encode_table({})
    payload = spec.BasicNack(1, multiple=False, requeue=True).encode()
    assert payload[-1] == 0b10


def test_unused_bits_are_ignored_on_decode():
    payload = bytearray(spec.BasicAck(7, True).encode())
    payload[-1] |= 0xF0
    assert spec.decode_method(bytes(payload)) == spec.BasicAck(7, True)


def test_trailing_bytes_are_tolerated():
    assert spec.decode_method(spec.TxCommit().encode() + b"x") == spec.TxCommit()


def test_unknown_method():
    with pytest.raises(UnknownMethod) as info:
        spec.decode_method(struct.pack(">HH", 60, 999))
    assert (info.value.class_id, info.value.method_id) == (60, 999)
    assert "basic" in str(info.value)
    with pytest.raises(UnknownMethod) as info:
        spec.decode_method(struct.pack(">HH", 77, 10))
    assert (info.value.class_id, info.value.method_id) == (77, 10)
    assert "unknown class 77" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_truncated_method_raises_syntax_error():
    with pytest.raises(AMQPSyntaxError, match="class and method id"):
        spec.decode_method(b"\x00\x3c")
    payload = spec.BasicPublish(exchange="ex", routing_key="rk").encode()
    with pytest.raises(AMQPSyntaxError, match="basic.publish"):
        spec.decode_method(payload[:-1])
    bad_utf8 = payload[:6] + b"\x02\xff\xfe" + payload[9:]
    with pytest.raises(AMQPSyntaxError, match="basic.publish: short string is not valid UTF-8"):
        spec.decode_method(bad_utf8)


def test_encode_rejects_overlong_shortstr():
    with pytest.raises(ValueError, match="255"):
        spec.QueueDeclare(queue="q" * 256).encode()


# ----------------------------------------------------------------- constants


def test_constants():
    assert (spec.FRAME_METHOD, spec.FRAME_HEADER, spec.FRAME_BODY, spec.FRAME_HEARTBEAT) == (
        1,
        2,
        3,
        8,
    )
    assert (spec.FRAME_MIN_SIZE, spec.FRAME_END, spec.REPLY_SUCCESS) == (4096, 206, 200)
    expected = {
        "CONTENT_TOO_LARGE": 311,
        "NO_ROUTE": 312,
        "NO_CONSUMERS": 313,
        "CONNECTION_FORCED": 320,
        "INVALID_PATH": 402,
        "ACCESS_REFUSED": 403,
        "NOT_FOUND": 404,
        "RESOURCE_LOCKED": 405,
        "PRECONDITION_FAILED": 406,
        "FRAME_ERROR": 501,
        "SYNTAX_ERROR": 502,
        "COMMAND_INVALID": 503,
        "CHANNEL_ERROR": 504,
        "UNEXPECTED_FRAME": 505,
        "RESOURCE_ERROR": 506,
        "NOT_ALLOWED": 530,
        "NOT_IMPLEMENTED": 540,
        "INTERNAL_ERROR": 541,
    }
    for name, value in expected.items():
        assert getattr(spec, name) == value
        assert spec.REPLY_TEXTS[value] == name
    assert spec.HARD_ERRORS == {320, 402, 501, 502, 503, 504, 505, 506, 530, 540, 541}
    assert spec.SOFT_ERRORS == {311, 312, 313, 403, 404, 405, 406}
    assert spec.CLASS_NAMES == {
        10: "connection",
        20: "channel",
        40: "exchange",
        50: "queue",
        60: "basic",
        85: "confirm",
        90: "tx",
    }
    assert spec.CLASS_BASIC == 60 and spec.CLASS_CONFIRM == 85


# ---------------------------------------------------------------- properties

FULL_PROPS = dict(
    content_type="application/json",
    content_encoding="gzip",
    headers={"x-retry": 3, "trace": "abc", "nested": {"a": [1, 2]}},
    delivery_mode=2,
    priority=7,
    correlation_id="corr-1",
    reply_to="amq.rabbitmq.reply-to",
    expiration="60000",
    message_id="msg-1",
    timestamp=1_700_000_000,
    type="order.created",
    user_id="guest",
    app_id="billing",
    cluster_id="c1",
)


def test_properties_slots_in_spec_order():
    assert spec.BasicProperties.__slots__ == tuple(FULL_PROPS)


def test_properties_roundtrip_and_match_pika():
    props = spec.BasicProperties(**FULL_PROPS)
    encoded = props.encode()
    assert spec.BasicProperties.decode(encoded) == props
    assert spec.BasicProperties.decode(b"abc" + encoded, 3) == props
    assert encoded == b"".join(pika.spec.BasicProperties(**FULL_PROPS).encode())


def test_empty_properties():
    assert spec.BasicProperties().encode() == b"\x00\x00"
    assert spec.BasicProperties.decode(b"\x00\x00") == spec.BasicProperties()
    assert repr(spec.BasicProperties(priority=1)) == "BasicProperties(priority=1)"


@pytest.mark.parametrize("seed", range(20))
def test_property_subsets_match_pika_and_delivery_mode_of(seed):
    rng = random.Random(seed)
    chosen = {k: v for k, v in FULL_PROPS.items() if rng.random() < 0.5}
    if rng.random() < 0.5:
        chosen["delivery_mode"] = rng.choice([1, 2])
    props = spec.BasicProperties(**chosen)
    encoded = props.encode()
    assert encoded == b"".join(pika.spec.BasicProperties(**chosen).encode())
    decoded = spec.BasicProperties.decode(encoded)
    assert decoded == props
    assert spec.delivery_mode_of(encoded) == (decoded.delivery_mode or 0)


def test_delivery_mode_of_skips_earlier_properties():
    props = spec.BasicProperties(
        content_type="t" * 200,
        content_encoding="e",
        headers={"h" * 50: "v" * 1000},
        delivery_mode=2,
    )
    header = struct.pack(">HHQ", 60, 0, 5) + props.encode()
    assert spec.delivery_mode_of(header, 12) == 2
    assert spec.delivery_mode_of(spec.BasicProperties(content_type="x").encode()) == 0
    with pytest.raises(AMQPSyntaxError):
        spec.delivery_mode_of(props.encode()[:-1])
    with pytest.raises(AMQPSyntaxError):
        spec.delivery_mode_of(b"\x10")


def test_properties_continuation_flag_words_are_skipped():
    # flags: content-type present + continuation bit; then an extra all-zero flag word.
    block = struct.pack(">HH", 0x8001, 0x0000) + b"\x04text"
    assert spec.BasicProperties.decode(block) == spec.BasicProperties(content_type="text")
    block = struct.pack(">HHH", 0x1001, 0x0001, 0) + b"\x02"
    assert spec.delivery_mode_of(block) == 2
    assert spec.BasicProperties.decode(block).delivery_mode == 2


def test_properties_decoded_from_pika_bytes():
    encoded = b"".join(pika.spec.BasicProperties(**FULL_PROPS).encode())
    assert spec.BasicProperties.decode(encoded) == spec.BasicProperties(**FULL_PROPS)


@pytest.mark.parametrize("cut", range(1, 40))
def test_truncated_properties_raise_syntax_error(cut):
    encoded = spec.BasicProperties(**FULL_PROPS).encode()
    with pytest.raises(AMQPSyntaxError):
        spec.BasicProperties.decode(encoded[:-cut])


def test_every_property_combination_roundtrips():
    names = list(FULL_PROPS)
    for mask in itertools.islice(range(1 << len(names)), 0, 1 << len(names), 97):
        chosen = {n: FULL_PROPS[n] for i, n in enumerate(names) if mask >> i & 1}
        encoded = spec.BasicProperties(**chosen).encode()
        assert spec.BasicProperties.decode(encoded) == spec.BasicProperties(**chosen)
        assert spec.delivery_mode_of(encoded) == chosen.get("delivery_mode", 0)
