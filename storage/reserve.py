"""A file of preallocated space, given back to the file system the moment a store meets a
full disk.  One per node, shared by its stores (`node.vhost_stores`): one store's deletes at
a time are enough to give LMDB free pages of its own again.

LMDB copies every page a transaction touches, deletes included: a commit that only removes
messages (a consumer's acks) still needs a few fresh pages when its free list is empty.  On
a disk that another process (or the store itself) has filled, those pages are what the
reserve is for: released, it lets the deletes commit, and the deletes give LMDB free pages
of its own from then on.  The reserve is taken again, a step at a time, once the disk has
room for it (`restore`).
"""

from __future__ import annotations

import errno
import os
import threading

STEP = 1 << 20
_FULL = (errno.ENOSPC, errno.EDQUOT)


class Reserve:
    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        self._lock = threading.Lock()  # the stores' writer threads share it
        try:
            self.held = os.path.getsize(path) if size else 0
        except OSError:
            self.held = 0

    @property
    def owed(self) -> int:
        """Bytes the reserve lacks: space the store counts as taken until it has them."""
        return max(self.size - self.held, 0)

    def restore(self) -> int:
        """Take what the reserve lacks, as far as the disk allows; returns the bytes held."""
        with self._lock:
            return self._restore()

    def _restore(self) -> int:
        if not self.owed:
            return self.held
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError:
            return self.held
        try:
            held = os.fstat(fd).st_size
            while held < self.size:
                step = min(STEP, self.size - held)
                try:
                    os.posix_fallocate(fd, held, step)
                except OSError as exc:
                    if exc.errno not in _FULL:
                        raise
                    break
                held += step
        except OSError:
            pass  # a file system that cannot preallocate: the store runs without a reserve
        finally:
            self.held = os.fstat(fd).st_size
            os.close(fd)
        return self.held

    def release(self) -> int:
        """Give the whole reserve back to the file system; returns the bytes freed."""
        with self._lock:
            freed = self.held
            if not freed:
                return 0
            try:
                os.truncate(self.path, 0)
            except OSError:
                return 0
            self.held = 0
            return freed
