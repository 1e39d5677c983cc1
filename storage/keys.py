"""Key encoding for the message store.

A key is ``bytes([len(name)]) + name + seq.to_bytes(8, "big")`` where ``name`` is the queue
name in UTF-8.  The length byte makes every queue's prefix unique (queue "a" never sees the
keys of queue "ab"), and big-endian sequence numbers make LMDB's byte order equal to
numeric order, so a cursor walks one queue in FIFO order.
"""

from __future__ import annotations

from functools import lru_cache

MAX_QUEUE_NAME_BYTES = 255
MAX_SEQ = (1 << 64) - 1
SEQ_BYTES = 8


@lru_cache(maxsize=4096)
def queue_prefix(queue: str) -> bytes:
    """The key prefix shared by every message of ``queue``; raises ValueError if too long."""
    name = queue.encode("utf-8")
    if len(name) > MAX_QUEUE_NAME_BYTES:
        raise ValueError(
            f"queue name '{queue[:40]}…' is {len(name)} bytes in UTF-8; "
            f"the limit is {MAX_QUEUE_NAME_BYTES}"
        )
    return bytes([len(name)]) + name


def check_seq(seq: int) -> None:
    """Reject sequence numbers that do not fit the 8-byte key field."""
    if not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"message sequence number {seq} is outside 0..{MAX_SEQ}")


def encode_key(queue: str, seq: int) -> bytes:
    check_seq(seq)
    return queue_prefix(queue) + seq.to_bytes(SEQ_BYTES, "big")


def seq_of(key: bytes | memoryview) -> int:
    return int.from_bytes(key[-SEQ_BYTES:], "big")


def decode_key(key: bytes) -> tuple[str, int]:
    n = key[0]
    return bytes(key[1 : 1 + n]).decode("utf-8"), seq_of(key)


def last_key(prefix: bytes) -> bytes:
    """The greatest possible key under ``prefix``: a seek target for reverse scans and for
    jumping to the next queue."""
    return prefix + b"\xff" * SEQ_BYTES
