"""AMQP exceptions raised deep in the broker and turned into channel.close or
connection.close in exactly one place (node/clients/connection.py).

Texts follow RabbitMQ's style, e.g. "NOT_FOUND - no queue 'jobs' in vhost '/'", because
clients and users grep for them."""

from __future__ import annotations

# Reply codes, names and the hard/soft split come from the generated spec module (one
# source of truth, checked against the XML by a test); the module has no dependencies.
from node.amqp.spec import (  # noqa: E402,F401 - re-exported for the rest of the broker
    ACCESS_REFUSED,
    CHANNEL_ERROR,
    COMMAND_INVALID,
    CONNECTION_FORCED,
    CONTENT_TOO_LARGE,
    FRAME_ERROR,
    HARD_ERRORS,
    INTERNAL_ERROR,
    INVALID_PATH,
    NO_CONSUMERS,
    NO_ROUTE,
    NOT_ALLOWED,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    REPLY_TEXTS,
    RESOURCE_ERROR,
    RESOURCE_LOCKED,
    SYNTAX_ERROR,
    UNEXPECTED_FRAME,
)

CODE_NAMES = REPLY_TEXTS


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


class AMQPConnectionError(AMQPError):
    """Always closes the connection, whatever the code (e.g. 403 on a failed login)."""

    @property
    def closes_connection(self) -> bool:
        return True


def vhost_text(vhost: str) -> str:
    return f"in vhost '{vhost}'"


def resource_text(kind: str, name: str, vhost: str) -> str:
    """How RabbitMQ names a resource in its texts (rabbit_misc:rs/1): "queue 'jobs' in
    vhost '/'" — the one place this shape is written."""
    return f"{kind} '{name}' {vhost_text(vhost)}"


def not_found(kind: str, name: str, vhost: str) -> ChannelError:
    return ChannelError(NOT_FOUND, f"no {resource_text(kind, name, vhost)}")


def access_refused(perm: str, kind: str, name: str, vhost: str, user: str) -> ChannelError:
    return ChannelError(
        ACCESS_REFUSED,
        f"access to {resource_text(kind, name, vhost)} refused for user '{user}'"
        if perm == "" else
        f"{perm} access to {resource_text(kind, name, vhost)} refused for user '{user}'",
    )


def resource_locked(queue: str, vhost: str) -> ChannelError:
    return ChannelError(
        RESOURCE_LOCKED,
        f"cannot obtain exclusive access to locked {resource_text('queue', queue, vhost)}. It "
        f"could be originally declared on another connection or the exclusive property value "
        f"does not match that of the original declaration.")


def precondition(text: str) -> ChannelError:
    return ChannelError(PRECONDITION_FAILED, text)
