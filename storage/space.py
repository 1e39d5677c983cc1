"""Disk space as one store sees it: what the file system has left, plus the pages of its own
LMDB file that hold nothing (LMDB never shrinks its file: consuming frees pages inside it,
not on the disk), minus what the node's reserve (`storage.reserve`) lacks.

A commit that fails for want of space (ENOSPC, or the EIO LMDB reports for a short write),
or one that leaves less than the node's disk free limit, marks the store `short` (the disk
alarm, raised at once) until the node's disk check finds room again; while its reserve is
not whole, the store admits a batch of new messages only if that leaves the reserve's worth
of space for deletes (`room_for`), so consumers can always drain it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from typing import Any, Callable

import lmdb

from storage.reserve import Reserve

log = logging.getLogger(__name__)

DEFAULT_RESERVE_BYTES = 4 << 20
RESERVE_FILE = "store.reserve"  # in the data directory
# a failed delete batch waits this long, doubling, before it tries again
RETRY_FIRST = 0.05
RETRY_MAX = 1.0
RESTORE_INTERVAL = 1.0
_WRITE_FAILURES = (os.strerror(errno.ENOSPC), os.strerror(errno.EIO), os.strerror(errno.EDQUOT))


def is_write_failure(exc: BaseException) -> bool:
    """A commit that the disk refused (full, quota, short write), as opposed to a broken
    environment: the transaction was aborted and the environment is still usable."""
    if isinstance(exc, lmdb.DiskError):
        return True
    return type(exc) is lmdb.Error and any(s in str(exc) for s in _WRITE_FAILURES)


def disk_free_bytes(path: str) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


class StoreSpace:
    def __init__(self, path: str, env: lmdb.Environment, dbs: list[Any],
                 shared_lock: Any, reserve: Reserve | None) -> None:
        self.path = path
        self._env = env
        self._dbs = dbs
        self._lock = shared_lock  # a read transaction holds the store's (shared) map lock
        # shared with the node's other stores; none: a store without a reserve
        self.reserve = reserve if reserve is not None else Reserve(os.devnull, 0)
        self.short = False  # a write failed for space, or went below limit; see `refresh`
        self.limit = 0  # the node's disk free limit, as of its last check (0: none yet)
        self.on_short: Callable[[], object] | None = None  # called on the writer thread
        self._last_restore = 0.0
        self.restore_reserve()

    def unused_in_file(self) -> int:
        """Bytes of the data file that hold no live page (LMDB's free pages, and pages an
        aborted commit wrote past the end)."""
        try:
            size = os.path.getsize(os.path.join(self.path, "data.mdb"))
        except OSError:
            return 0
        with self._lock, self._env.begin() as txn:
            stats = [self._env.stat()] + [txn.stat(db) for db in self._dbs]
        psize = stats[0]["psize"]
        used = 2 + sum(s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]
                       for s in stats)
        return max(size - used * psize, 0)

    def available(self) -> int:
        """Space this store can still write to, net of what its reserve lacks."""
        return disk_free_bytes(self.path) + self.unused_in_file() - self.reserve.owed

    def failed(self, exc: BaseException) -> None:
        """A commit failed for want of space (writer thread)."""
        if not self.short:
            log.warning("message store %s: write refused by the disk (%s): new messages are "
                        "refused, deletes go on", self.path, exc)
        self.short = True
        if self.on_short is not None:
            self.on_short()

    def release_reserve(self) -> bool:
        freed = self.reserve.release()
        if freed:
            log.warning("message store %s: the node's reserve of %d bytes released so that "
                        "deletes can commit", self.path, freed)
        return bool(freed)

    def room_for(self, nbytes: int) -> bool:
        """Whether a batch of ``nbytes`` of new records leaves the reserve's worth of space
        (writer thread).  Always true while the reserve file is whole: the disk decides."""
        if not self.reserve.owed:
            return True
        return self.available() - nbytes - nbytes // 8 - (64 << 10) >= 0

    def after_commit(self) -> None:
        """After each commit (writer thread): a store that has just gone below the disk
        free limit raises the alarm now, not at the next check, which could come after
        the disk is full; and the reserve is taken back once the disk has room for it."""
        limit = self.limit
        if limit and not self.short:
            free = disk_free_bytes(self.path)
            if free < limit and free + self.unused_in_file() - self.reserve.owed < limit:
                self.short = True
                if self.on_short is not None:
                    self.on_short()
        if not self.reserve.owed:
            return
        now = time.monotonic()
        if now - self._last_restore < RESTORE_INTERVAL:
            return
        self._last_restore = now
        self.restore_reserve()

    def restore_reserve(self) -> None:
        """Take what the reserve lacks when the disk has that and a whole reserve more: a
        nearly full disk is left to what the node itself needs to start and run."""
        owed = self.reserve.owed
        if owed and disk_free_bytes(self.path) >= owed + self.reserve.size:
            self.reserve.restore()

    def refresh(self, limit: int) -> int:
        """The disk check (loop thread): the bytes free inside this store's file; a short
        store is no longer short once it has room for the limit and a whole reserve
        besides, net of what the reserve lacks."""
        self.limit = limit
        unused = self.unused_in_file()
        spare = unused - self.reserve.owed
        if self.short and disk_free_bytes(self.path) + spare >= limit + self.reserve.size:
            log.warning("message store %s: space available again", self.path)
            self.short = False
        return unused
