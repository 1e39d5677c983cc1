"""Encoding of one store transaction (a generation's net effect) as a change-log record.

A record is msgpack: a list with one entry per queue the transaction touched,
``[queue, cleared, {seq: message record}, [deleted seqs], [delivered seqs]]``, plus a sixth
item ``[[lo, hi], ...]`` (range deletes: every message and mark with ``lo <= seq < hi``,
what a purge of a paged queue writes) only when the transaction has any, so a record
without one reads as before.  Applied in the order clear, ranges, deletes, puts, delivered
marks, exactly as the owner's own commit applied it.  Never pickle: records cross the
network between nodes.
"""

from __future__ import annotations

from typing import Any

import msgpack

from storage.keys import MAX_QUEUE_NAME_BYTES, check_seq

# (queue, cleared, puts, deletes, delivered, ranges)
QueueChange = tuple[str, bool, dict[int, bytes], list[int], list[int], list[tuple[int, int]]]


class RecordError(ValueError):
    """A change-log record that is not what `encode` writes."""


def encode(changes: list[QueueChange]) -> bytes:
    # the sixth item only when there are range deletes: such records read as before
    return msgpack.packb([c[:5] if len(c) == 6 and not c[5] else c for c in changes],
                         use_bin_type=True)


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
        if not (isinstance(entry, list) and len(entry) in (5, 6)):
            raise RecordError("change record entry is not a 5- or 6-item list")
        queue, cleared, puts, deletes, delivered = entry[:5]
        ranges: Any = entry[5] if len(entry) == 6 else []
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
        if not isinstance(ranges, list):
            raise RecordError(f"bad range deletes for queue '{queue}'")
        pairs: list[tuple[int, int]] = []
        for pair in ranges:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise RecordError(f"bad range delete for queue '{queue}'")
            _check(queue, pair[0])
            _check(queue, pair[1])
            if pair[0] >= pair[1]:
                raise RecordError(f"empty range delete {pair} for queue '{queue}'")
            pairs.append((pair[0], pair[1]))
        out.append((queue, cleared, puts, deletes, delivered, pairs))
    return out
