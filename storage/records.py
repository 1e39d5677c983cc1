"""Encoding of one store transaction (a generation's net effect) as a change-log record.

A record is msgpack: a list with one entry per queue the transaction touched,
``[queue, cleared, {seq: message record}, [deleted seqs], [delivered seqs]]``, applied in
that order (clear, deletes, puts, delivered marks), exactly as the owner's own commit
applied it.  Never pickle: records cross the network between nodes.
"""

from __future__ import annotations

from typing import Any

import msgpack

from storage.keys import MAX_QUEUE_NAME_BYTES, check_seq

QueueChange = tuple[str, bool, dict[int, bytes], list[int], list[int]]


class RecordError(ValueError):
    """A change-log record that is not what `encode` writes."""


def encode(changes: list[QueueChange]) -> bytes:
    return msgpack.packb(changes, use_bin_type=True)


def _check(queue: str, seq: Any) -> None:
    if type(seq) is not int:
        raise RecordError(f"bad sequence number {seq!r} for queue '{queue}'")
    try:
        check_seq(seq)
    except ValueError as e:
        raise RecordError(str(e)) from None


def decode(payload: bytes) -> list[QueueChange]:
    """Parse and validate a record (it comes from another node: check every field)."""
    try:
        raw: Any = msgpack.unpackb(payload, raw=False, strict_map_key=False,
                                   use_list=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise RecordError(f"undecodable change record: {e}") from None
    if not isinstance(raw, list):
        raise RecordError("change record is not a list")
    out: list[QueueChange] = []
    for entry in raw:
        if not (isinstance(entry, list) and len(entry) == 5):
            raise RecordError("change record entry is not a 5-item list")
        queue, cleared, puts, deletes, delivered = entry
        if not isinstance(queue, str) or len(queue.encode()) > MAX_QUEUE_NAME_BYTES:
            raise RecordError("bad queue name in change record")
        if not isinstance(cleared, bool) or not isinstance(puts, dict) \
                or not isinstance(deletes, list) or not isinstance(delivered, list):
            raise RecordError(f"bad change record entry for queue '{queue}'")
        for seq, value in puts.items():
            _check(queue, seq)
            if not isinstance(value, bytes):
                raise RecordError("message record is not bytes")
        for seq in deletes:
            _check(queue, seq)
        for seq in delivered:
            _check(queue, seq)
        out.append((queue, cleared, puts, deletes, delivered))
    return out
