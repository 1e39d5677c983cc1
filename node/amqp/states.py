"""Everything that decides where the protocol goes next lives in this file (as h11's
_state.py): the connection's and each channel's states, the two transition tables, and
the one `transition()` that reads them.  A pair a table does not list is a protocol error
(503 COMMAND_INVALID), never a KeyError.  The core (protocol.py) asks before it moves; it
never assigns a state itself.

The hot path is a transition too: a basic.publish whose content header and body arrived
in the same read is taken whole (`WHOLE_PUBLISH`), from CH_OPEN back to CH_OPEN; the core
checks that the channel is CH_OPEN and, since the table leaves it there, writes nothing
(checked below at import)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import TypeVar

from node.amqp import errors
from node.amqp.errors import AMQPConnectionError


class State(IntEnum):
    """Connection states, in the order a connection goes through them."""

    AWAIT_HEADER = 0  # the 8-byte protocol header
    AWAIT_START_OK = 1  # we sent connection.start
    AUTHENTICATING = 2  # paused: the broker checks the login
    AWAIT_TUNE_OK = 3  # we sent connection.tune
    AWAIT_OPEN = 4
    OPENING = 5  # paused: the broker decides on the vhost
    OPEN = 6
    CLOSING = 7  # we sent connection.close and wait for close-ok
    CLOSED = 8  # done: nothing more is read


AWAIT_HEADER, AWAIT_START_OK, AUTHENTICATING, AWAIT_TUNE_OK, AWAIT_OPEN, OPENING, OPEN, \
    CLOSING, CLOSED = tuple(State)

# What the management API calls each state (RabbitMQ's names).
STATE_NAMES = {AWAIT_HEADER: "starting", AWAIT_START_OK: "starting",
               AUTHENTICATING: "starting", AWAIT_TUNE_OK: "tuning", AWAIT_OPEN: "opening",
               OPENING: "opening", OPEN: "running", CLOSING: "closing", CLOSED: "closed"}

# states in which frames are read: not while the broker decides, nor once closed
_READS = frozenset((AWAIT_START_OK, AWAIT_TUNE_OK, AWAIT_OPEN, OPEN, CLOSING))
_LIVE = (AWAIT_START_OK, AUTHENTICATING, AWAIT_TUNE_OK, AWAIT_OPEN, OPENING, OPEN)

# (state, what happened) -> next state.  "app:" inputs are the broker's decisions; the
# others arrived from the client.
CONNECTION: dict[tuple[State, str], State] = {
    (AWAIT_HEADER, "protocol-header"): AWAIT_START_OK,  # we send connection.start
    (AWAIT_HEADER, "other-protocol"): CLOSED,  # we send our protocol header, hang up
    (AWAIT_START_OK, "connection.start-ok"): AUTHENTICATING,
    (AUTHENTICATING, "app:accept-login"): AWAIT_TUNE_OK,  # we send connection.tune
    (AWAIT_TUNE_OK, "connection.tune-ok"): AWAIT_OPEN,
    (AWAIT_OPEN, "connection.open"): OPENING,
    (AWAIT_OPEN, "app:adopt"): OPENING,  # another node did the handshake and forwards
    (OPENING, "app:accept-open"): OPEN,  # we send connection.open-ok
    (OPENING, "app:hand-over"): CLOSED,  # the bytes go to the vhost's owner node
    (OPEN, "connection.update-secret"): OPEN,
    (CLOSING, "connection.close-ok"): CLOSED,
    (CLOSING, "connection.close"): CLOSED,  # both sides closed at once: we answer close-ok
    **{(s, "connection.close"): CLOSED for s in _LIVE},  # we answer close-ok
    **{(s, "app:close"): CLOSING for s in _LIVE},  # we send connection.close
    **{(s, "app:abort"): CLOSED for s in (*_LIVE, AWAIT_HEADER, CLOSING)},  # silent hang-up
}


class ChannelState(IntEnum):
    OPEN = 0  # idle: any method may come
    AWAIT_HEADER = 1  # basic.publish came: its content header must be next
    AWAIT_BODY = 2  # body frames until the header's body size is reached
    DISCARD_BODY = 3  # a refused message: its body frames are read and dropped
    CLOSE_RECEIVED = 4  # the client sent channel.close; the broker will confirm it
    CLOSING = 5  # we sent channel.close: only close/close-ok count (spec 2.2.5)


CH_OPEN, CH_AWAIT_HEADER, CH_AWAIT_BODY, CH_DISCARD_BODY, CH_CLOSE_RECEIVED, CH_CLOSING = \
    tuple(ChannelState)
FORGOTTEN = None  # the number is free again

# (channel state, what happened) -> next state; FORGOTTEN frees the number.
WHOLE_PUBLISH = "whole-publish"  # basic.publish with its header and body in one read

CHANNEL: dict[tuple[ChannelState, str], ChannelState | None] = {
    (CH_OPEN, WHOLE_PUBLISH): CH_OPEN,  # Publish at once (the core's fast path)
    (CH_OPEN, "basic.publish"): CH_AWAIT_HEADER,
    (CH_OPEN, "method"): CH_OPEN,  # any other method: the broker's (MethodReceived)
    (CH_AWAIT_HEADER, "content-header"): CH_AWAIT_BODY,
    (CH_AWAIT_HEADER, "empty-content-header"): CH_OPEN,  # body size 0: Publish
    (CH_AWAIT_HEADER, "oversized-content-header"): CH_DISCARD_BODY,  # ContentRejected
    (CH_AWAIT_BODY, "body"): CH_AWAIT_BODY,
    (CH_AWAIT_BODY, "last-body"): CH_OPEN,  # Publish
    (CH_DISCARD_BODY, "body"): CH_DISCARD_BODY,
    (CH_DISCARD_BODY, "last-body"): CH_OPEN,
    (CH_OPEN, "channel.close"): CH_CLOSE_RECEIVED,
    (CH_OPEN, "channel.close-ok"): CH_OPEN,  # close-ok we never asked for: ignored
    (CH_CLOSE_RECEIVED, "app:close-ok"): FORGOTTEN,  # we send close-ok
    # an error found while the client's close waited behind a pending Raft change: the
    # error still reaches the client (channel.close), whose close-ok ends the channel
    (CH_CLOSE_RECEIVED, "app:close"): CH_CLOSING,
    (CH_CLOSING, "channel.close-ok"): FORGOTTEN,
    (CH_CLOSING, "channel.close"): FORGOTTEN,  # closes crossed: we send close-ok
    **{(s, "app:close"): CH_CLOSING  # we send channel.close
       for s in (CH_OPEN, CH_AWAIT_HEADER, CH_AWAIT_BODY, CH_DISCARD_BODY)},
}
# Frames that arrive on a channel in these states are dropped without a transition.
IGNORING = (CH_CLOSE_RECEIVED, CH_CLOSING)



_S = TypeVar("_S", State, ChannelState)


def transition(table: Mapping[tuple[_S, str], _S | None], state: _S, happened: str
               ) -> _S | None:
    """The state after ``happened`` in ``state``; a pair the table does not list is a
    protocol error, whatever asked."""
    try:
        return table[(state, happened)]
    except KeyError:
        kind = "connection" if isinstance(state, State) else "channel"
        raise AMQPConnectionError(errors.COMMAND_INVALID,
                                  f"{happened} is not allowed while the {kind} is "
                                  f"{state.name.lower()}") from None


# the fast path leaves the channel as it is: it must stay a transition of the table
assert CHANNEL[(CH_OPEN, WHOLE_PUBLISH)] is CH_OPEN
