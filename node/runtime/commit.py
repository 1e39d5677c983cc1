"""Committing one definition change through Raft, with its refusal as an AMQP error: what
every service that changes definitions shares."""

from __future__ import annotations

from typing import TYPE_CHECKING

from node.amqp import errors
from node.amqp.errors import AMQPConnectionError, ChannelError

if TYPE_CHECKING:
    from cluster.raft import MetadataStore


async def commit(metadata: "MetadataStore", command: dict) -> dict:
    """Submit ``command``; its result once committed and applied here.  No quorum is 541
    INTERNAL_ERROR (the connection closes); a refused change is a channel error with the
    state machine's code and text."""
    from cluster.raft import ClusterUnavailable
    try:
        result = await metadata.submit(command)
    except ClusterUnavailable as e:
        raise AMQPConnectionError(errors.INTERNAL_ERROR, str(e)) from None
    if not result.get("ok"):
        raise ChannelError(result.get("code", errors.INTERNAL_ERROR),
                           result.get("text", "definition change refused"))
    return result
