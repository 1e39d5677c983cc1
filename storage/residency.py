"""Give back the pages of an LMDB map that the process has touched.

LMDB reads through a read-only shared memory map of data.mdb.  Every page a transaction
touches (appending a message copies its leaf page through the map) stays mapped into the
process and counts in its RSS, although it is only a clean copy of the file in the page
cache.  A queue backlog of a million messages would so show as hundreds of MB of "memory".
madvise(MADV_DONTNEED) on the mapping drops those page-table entries: the pages stay in
the kernel's cache, and the next access maps them again.  Linux only; elsewhere a no-op."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

MADV_DONTNEED = 4
_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except OSError:
        _libc = None


def mappings_of(path: str) -> list[tuple[int, int]]:
    """(start, length) of this process's mappings of the file at `path`."""
    real = os.path.realpath(path)
    out = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].strip() == real:
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    out.append((lo, hi - lo))
    except OSError:
        pass
    return out


def release_mapped_pages(path: str) -> int:
    """Drop the resident pages of every mapping of `path`; returns bytes of mappings."""
    if _libc is None:
        return 0
    total = 0
    for start, length in mappings_of(path):
        if _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), MADV_DONTNEED) != 0:
            log.debug("madvise(%s) failed: errno %d", path, ctypes.get_errno())
            continue
        total += length
    return total
