"""Users, password hashes and per-vhost permissions, checked the way RabbitMQ checks them.

Password hashes use RabbitMQ's format (base64 of a 4-byte salt followed by
SHA-256(salt + password)), so definitions exported from RabbitMQ import unchanged."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from functools import lru_cache

HASHING_SHA256 = "rabbit_password_hashing_sha256"
HASHING_SHA512 = "rabbit_password_hashing_sha512"
HASHING_MD5 = "rabbit_password_hashing_md5"

_ALGOS = {HASHING_SHA256: hashlib.sha256, HASHING_SHA512: hashlib.sha512,
          HASHING_MD5: hashlib.md5}


def hash_password(password: str, hashing: str = HASHING_SHA256, salt: bytes | None = None) -> str:
    salt = os.urandom(4) if salt is None else salt
    digest = _ALGOS[hashing](salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode()


def check_password(password: str, password_hash: str, hashing: str = HASHING_SHA256) -> bool:
    if not password_hash:
        return False  # a user without a password cannot log in with PLAIN
    try:
        raw = base64.b64decode(password_hash)
    except ValueError:
        return False
    algo = _ALGOS.get(hashing, hashlib.sha256)
    salt, digest = raw[:4], raw[4:]
    return hmac.compare_digest(algo(salt + password.encode()).digest(), digest)


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None


def matches(pattern: str, name: str) -> bool:
    """RabbitMQ permission patterns are regexes matched anywhere unless anchored; an empty
    pattern grants nothing."""
    if pattern == "":
        return False
    rx = _compiled(pattern)
    return bool(rx and rx.search(name))


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    return host.startswith("127.") or host in ("::1", "localhost") or host.startswith("::ffff:127.")


def decode_plain(response: bytes) -> tuple[str, str]:
    """PLAIN: authzid NUL authcid NUL password."""
    parts = response.split(b"\x00")
    if len(parts) != 3:
        raise ValueError("malformed PLAIN response")
    return parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
