"""A Raft journal that is on disk before anything that depends on it leaves the node.

pysyncobj's `FileJournal` writes entries into an mmap'd file and never fsyncs it, and saves
its meta file (term, vote, commit index) with a rename but no fsync (its issue #84): a
committed definition could vanish on power loss while the messages it names are on disk.

`DurableJournal` keeps pysyncobj's file format and marks the journal dirty on every change;
`sync()` makes it durable with one fsync of the journal file, however many entries were
added since the last one (a follower appending a batch pays once).  `cluster.raft` calls
`sync()` at the two points Raft needs it: before any Raft message leaves the node (an
append-entries reply or a leader's append-entries: a peer may count what we claim to hold)
and before a committed entry is applied (applying is what acknowledges a change to the
client).  Term and vote are fsynced (file and directory) before they are used, as Raft
requires of `currentTerm` and `votedFor`.

The journal is written through mmap into a file that pysyncobj grows sparse: on a full disk
the first write to a new page would kill the node with SIGBUS.  `add` allocates the
entry's bytes first, so a full disk refuses the entry (OSError, before the journal changes)
instead."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from collections.abc import Callable
from typing import Any

from pysyncobj.journal import FileJournal, MetaStorer, to_bytes
from pysyncobj.pickle import dumps

__all__ = ["DurableJournal", "fsync_dir"]


def fsync_dir(path: str) -> None:
    """A rename is durable only once its directory is."""
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_FALLOC_FL_KEEP_SIZE = 1  # allocate past the end without changing the size mmap sees


def allocate(fd: int, offset: int, length: int) -> None:
    """Back ``[offset, offset+length)`` of the file with disk blocks; OSError(ENOSPC) when
    the disk has none.  A file system without fallocate is left as it is."""
    fallocate = _libc.fallocate
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if fallocate(fd, _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(err, os.strerror(err))


# Called when the disk refuses a Raft write; True if it made room (the node gives back its
# reserve file: node/alarms.py).  Raft's term and vote, and the entries a follower takes,
# must be written whatever the messages filled: a node that cannot write them leaves Raft,
# and an owner that left Raft stops serving (the owner lease) with nobody deposing it.
def _no_room() -> bool:
    return False


on_disk_full: Callable[[], bool] = _no_room


def _with_room(write: Callable[[], None]) -> None:
    try:
        write()
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT) or not on_disk_full():
            raise
        write()


class _DurableMetaStorer(MetaStorer):
    def storeMeta(self, meta: dict[str, Any]) -> None:  # noqa: N802 - pysyncobj's name
        path = self.getPath()

        def write() -> None:
            with open(path + ".tmp", "wb") as f:
                f.write(dumps(meta))
                f.flush()
                os.fsync(f.fileno())
        _with_room(write)
        shutil.move(path + ".tmp", path)
        fsync_dir(path)


class DurableJournal(FileJournal):
    def __init__(self, journal_file: str) -> None:
        super().__init__(journal_file)
        self._path = journal_file
        self._dirty = False
        self.syncs = 0  # fsyncs done (management figures, tests)
        # pysyncobj's private attribute: its meta writes go through our durable storer
        self._FileJournal__metaStorer = _DurableMetaStorer(journal_file + ".meta")

    # every mutation of the log marks it dirty; sync() makes it durable
    def add(self, command: Any, idx: int, term: int) -> None:
        # length prefix and suffix, index and term, then the command (FileJournal.add)
        fd, offset = self._file().fileno(), self._FileJournal__currentOffset
        size = 24 + len(to_bytes(command))
        _with_room(lambda: allocate(fd, offset, size))
        super().add(command, idx, term)
        self._dirty = True

    def clear(self) -> None:
        super().clear()
        self._dirty = True

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802,N803
        super().deleteEntriesFrom(entryFrom)
        self._dirty = True

    @property
    def dirty(self) -> bool:
        return self._dirty

    def sync(self) -> None:
        """fsync the journal file if anything changed since the last sync (tick thread)."""
        if not self._dirty:
            return
        self._dirty = False
        os.fsync(self._file().fileno())
        self.syncs += 1

    def _file(self) -> Any:
        return self._FileJournal__journalFile._ResizableFile__f  # reopened when it grows
