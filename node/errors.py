"""AMQP exceptions raised deep in the broker and turned into channel.close or
connection.close in exactly one place (node/amqp/connection.py).

Texts follow RabbitMQ's style, e.g. "NOT_FOUND - no queue 'jobs' in vhost '/'", because
clients and users grep for them."""

from __future__ import annotations

# Reply codes (the same values are generated into node/amqp/spec.py from the spec; they are
# repeated here so that exchanges/queues can raise without importing the codec).
CONTENT_TOO_LARGE = 311
NO_ROUTE = 312
NO_CONSUMERS = 313
CONNECTION_FORCED = 320
INVALID_PATH = 402
ACCESS_REFUSED = 403
NOT_FOUND = 404
RESOURCE_LOCKED = 405
PRECONDITION_FAILED = 406
FRAME_ERROR = 501
SYNTAX_ERROR = 502
COMMAND_INVALID = 503
CHANNEL_ERROR = 504
UNEXPECTED_FRAME = 505
RESOURCE_ERROR = 506
NOT_ALLOWED = 530
NOT_IMPLEMENTED = 540
INTERNAL_ERROR = 541

CODE_NAMES = {
    CONTENT_TOO_LARGE: "CONTENT_TOO_LARGE",
    NO_ROUTE: "NO_ROUTE",
    NO_CONSUMERS: "NO_CONSUMERS",
    CONNECTION_FORCED: "CONNECTION_FORCED",
    INVALID_PATH: "INVALID_PATH",
    ACCESS_REFUSED: "ACCESS_REFUSED",
    NOT_FOUND: "NOT_FOUND",
    RESOURCE_LOCKED: "RESOURCE_LOCKED",
    PRECONDITION_FAILED: "PRECONDITION_FAILED",
    FRAME_ERROR: "FRAME_ERROR",
    SYNTAX_ERROR: "SYNTAX_ERROR",
    COMMAND_INVALID: "COMMAND_INVALID",
    CHANNEL_ERROR: "CHANNEL_ERROR",
    UNEXPECTED_FRAME: "UNEXPECTED_FRAME",
    RESOURCE_ERROR: "RESOURCE_ERROR",
    NOT_ALLOWED: "NOT_ALLOWED",
    NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    INTERNAL_ERROR: "INTERNAL_ERROR",
}

# Codes that the spec calls hard errors: they always close the whole connection.
HARD_ERRORS = frozenset(
    {CONNECTION_FORCED, INVALID_PATH, FRAME_ERROR, SYNTAX_ERROR, COMMAND_INVALID,
     CHANNEL_ERROR, UNEXPECTED_FRAME, RESOURCE_ERROR, NOT_ALLOWED, NOT_IMPLEMENTED,
     INTERNAL_ERROR}
)


class AMQPError(Exception):
    """An error with an AMQP reply code.  `text` is the part after "CODE_NAME - "."""

    def __init__(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.class_id = class_id
        self.method_id = method_id

    @property
    def reply_text(self) -> str:
        return f"{CODE_NAMES.get(self.code, 'ERROR')} - {self.text}"

    @property
    def closes_connection(self) -> bool:
        return self.code in HARD_ERRORS


class ChannelError(AMQPError):
    """Closes the channel (unless the code is a hard error, which closes the connection)."""


class ConnectionError_(AMQPError):
    """Always closes the connection, whatever the code (e.g. 403 on a failed login)."""

    @property
    def closes_connection(self) -> bool:
        return True


def vhost_text(vhost: str) -> str:
    return f"in vhost '{vhost}'"


def not_found(kind: str, name: str, vhost: str) -> ChannelError:
    return ChannelError(NOT_FOUND, f"no {kind} '{name}' {vhost_text(vhost)}")


def access_refused(perm: str, kind: str, name: str, vhost: str, user: str) -> ChannelError:
    return ChannelError(
        ACCESS_REFUSED,
        f"access to {kind} '{name}' {vhost_text(vhost)} refused for user '{user}'"
        if perm == "" else
        f"{perm} access to {kind} '{name}' {vhost_text(vhost)} refused for user '{user}'",
    )


def precondition(text: str) -> ChannelError:
    return ChannelError(PRECONDITION_FAILED, text)
