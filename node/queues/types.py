"""Queue types, as RabbitMQ 4.0 has them: which type a declaration makes (the
`x-queue-type` argument, else the vhost's `default_queue_type` when the queue's flags allow
it), which arguments and flags each type refuses, with RabbitMQ's codes and texts
(rabbit_amqqueue:check_declare_arguments, rabbit_queue_type_util, and each type's
capabilities/0).

WarrenMQ has classic and quorum queues; both are replicated by the vhost's copies, so a
quorum queue here differs from a classic one only in what a client can see: durable only,
its own set of arguments, a delivery limit and the `x-delivery-count` header."""

from __future__ import annotations

from node.amqp import errors

CLASSIC, QUORUM = "classic", "quorum"
TYPES = (CLASSIC, QUORUM)
MODULES = {CLASSIC: "rabbit_classic_queue", QUORUM: "rabbit_quorum_queue"}

# capabilities/0 of each type in RabbitMQ 4.0: the queue arguments it takes
_CLASSIC_ARGS = frozenset((
    "x-expires", "x-message-ttl", "x-dead-letter-exchange", "x-dead-letter-routing-key",
    "x-max-length", "x-max-length-bytes", "x-max-priority", "x-overflow", "x-queue-mode",
    "x-queue-version", "x-single-active-consumer", "x-queue-type", "x-queue-master-locator",
    "x-queue-leader-locator"))
# in RabbitMQ's order: a quorum queue's redeclaration compares them in this order
QUORUM_ARGS = (
    "x-dead-letter-exchange", "x-dead-letter-routing-key", "x-dead-letter-strategy",
    "x-expires", "x-max-length", "x-max-length-bytes", "x-max-in-memory-length",
    "x-max-in-memory-bytes", "x-overflow", "x-single-active-consumer", "x-queue-type",
    "x-quorum-initial-group-size", "x-delivery-limit", "x-message-ttl",
    "x-queue-leader-locator")
_QUORUM_ARGS = frozenset(QUORUM_ARGS)
_STREAM_ARGS = frozenset((
    "x-max-length-bytes", "x-queue-type", "x-max-age", "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size", "x-queue-leader-locator"))
# an argument some type knows but this one does not is refused; one no type knows is kept
_KNOWN_ARGS = _CLASSIC_ARGS | _QUORUM_ARGS | _STREAM_ARGS
_ARGS = {CLASSIC: _CLASSIC_ARGS, QUORUM: _QUORUM_ARGS}

DLX_STRATEGIES = ("at-most-once", "at-least-once")

# rabbit_quorum_queue: ?DEFAULT_DELIVERY_LIMIT (4.0; unlimited before)
DEFAULT_DELIVERY_LIMIT = 20


def _text(v: object) -> object:
    return bytes(v).decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else v


def declared_type(args: dict) -> str | None:
    """The `x-queue-type` argument as text, or None when absent."""
    v = _text(args.get("x-queue-type"))
    return None if v is None else str(v)


def queue_type(args: dict) -> str:
    """The type of an existing queue: its arguments name it (a vhost default was written
    into them at declaration); none means classic."""
    return QUORUM if declared_type(args) == QUORUM else CLASSIC


def is_compatible(qtype: str, durable: bool, exclusive: bool, auto_delete: bool) -> bool:
    """rabbit_queue_type:is_compatible/4: a quorum queue is durable, shared and kept."""
    return qtype != QUORUM or (durable and not exclusive and not auto_delete)


def with_default_type(args: dict, default_type: str | None, durable: bool, exclusive: bool,
                      auto_delete: bool) -> dict:
    """rabbit_amqqueue:augment_declare_args: without an `x-queue-type` argument a queue
    takes its vhost's default type when its flags allow, else classic; the type chosen is
    written into the arguments (what the management API shows, what redeclarations are
    compared with).  A classic choice is written only when the vhost has another default,
    so that queues in a vhost without one keep the arguments their client gave."""
    if declared_type(args) is not None or default_type in (None, "", CLASSIC):
        return args
    chosen = default_type if is_compatible(default_type, durable, exclusive,
                                           auto_delete) else CLASSIC
    return {**args, "x-queue-type": chosen}


def check_server_named(args: dict) -> None:
    if declared_type(args) == QUORUM:
        raise errors.precondition("Cannot declare a server-named queue for type "
                                  "rabbit_quorum_queue")


def check_declare(args: dict, name: str, vhost: str, durable: bool, exclusive: bool,
                  auto_delete: bool) -> None:
    """The type-specific checks of a new queue, in RabbitMQ's order: the type itself,
    arguments the type does not take, then (quorum) the flags."""
    qtype = declared_type(args)
    what = f"queue '{name}' {errors.vhost_text(vhost)}"
    if qtype is not None and qtype not in TYPES:
        raise errors.precondition(f"invalid arg 'x-queue-type' for {what}: "
                                  f"\"unsupported queue type '{qtype}'\"")
    qtype = qtype or CLASSIC
    strategy = args.get("x-dead-letter-strategy")
    if qtype == QUORUM and strategy is not None and _text(strategy) not in DLX_STRATEGIES:
        raise errors.precondition(f"invalid arg 'x-dead-letter-strategy' for {what}: "
                                  "invalid_dlx_strategy")
    allowed = _ARGS[qtype]
    for key in args:
        if key in _KNOWN_ARGS and key not in allowed:
            raise errors.precondition(f"invalid arg '{key}' for {what} of queue type "
                                      f"{MODULES[qtype]}")
    if qtype == QUORUM:
        # rabbit_quorum_queue:declare: check_auto_delete, check_exclusive, check_non_durable
        for bad, prop in ((auto_delete, "auto-delete"), (exclusive, "exclusive-owner"),
                          (not durable, "non-durable")):
            if bad:
                raise errors.precondition(f"invalid property '{prop}' for {what}")


def delivery_limit(arg: object, policy: object) -> int | None:
    """A quorum queue's delivery limit (rabbit_quorum_queue:ra_machine_config): the smaller
    of argument and policy, the larger when either is negative; 20 when neither is set;
    a negative limit (or one that is not a number) means none."""
    a = arg if isinstance(arg, int) and not isinstance(arg, bool) else None
    p = policy if isinstance(policy, int) and not isinstance(policy, bool) else None
    if arg is None and policy is None:
        return DEFAULT_DELIVERY_LIMIT
    if a is None and p is None:
        return None  # set, but not to a number: RabbitMQ's comparison never trips
    if a is None or p is None:
        limit = a if p is None else p
    elif a < 0 or p < 0:
        limit = max(a, p)
    else:
        limit = min(a, p)
    assert limit is not None
    return None if limit < 0 else limit
