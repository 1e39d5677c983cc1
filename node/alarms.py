"""Resource alarms, as RabbitMQ raises them: when the node's memory use crosses the high
watermark, or the data directory's free disk space falls below the limit, publishing
connections are blocked (connection.blocked, and their sockets are no longer read) until
every alarm clears (connection.unblocked).  Consumers keep draining meanwhile, since only
connections that publish are blocked.

The disk counted is what the stores can write to: the file system's free bytes plus the
pages free inside their LMDB files (which never shrink, so consuming frees space there and
not on the disk) less what their reserve lacks; a store whose commit found the disk full
raises the alarm at once, without waiting for the next check."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Callable

from storage.reserve import Reserve
from storage.space import disk_free_bytes

log = logging.getLogger("warren.alarms")

MEMORY, DISK = "memory", "disk"

__all__ = ["MEMORY", "DISK", "ResourceMonitor", "disk_free_bytes", "rss_bytes",
           "total_memory_bytes", "reserve_room_at_start"]

# Room kept for the node's own files (the Raft journal and its meta file), given back to
# the disk when a node starts with less than this left, so that it starts on a full disk.
NODE_RESERVE_FILE = "node.reserve"
NODE_RESERVE_BYTES = 2 << 20


def total_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 << 30


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def node_reserve(data_dir: str) -> Reserve:
    return Reserve(os.path.join(data_dir, NODE_RESERVE_FILE), NODE_RESERVE_BYTES)


def reserve_room_at_start(data_dir: str) -> None:
    """Before Raft writes its journal: release the node's reserve on a full disk, take it
    when there is room."""
    reserve = node_reserve(data_dir)
    free = disk_free_bytes(data_dir)
    if free >= 2 * reserve.size:
        reserve.restore()
    elif free < reserve.size and reserve.release():
        log.warning("disk full: the node's reserve of %d bytes released for its own files",
                    reserve.size)


class ResourceMonitor:
    def __init__(self, data_dir: str, memory_fraction: float, memory_bytes: int,
                 disk_free_limit: int, interval: float,
                 on_change: Callable[[set[str]], None],
                 store_space: Callable[[int], tuple[int, bool]] | None = None) -> None:
        self.data_dir = data_dir
        self.memory_fraction = memory_fraction
        self.memory_bytes = memory_bytes  # absolute watermark; 0 = use the fraction
        self.disk_free_limit = disk_free_limit
        self.interval = interval
        self.on_change = on_change
        self.store_space = store_space  # limit -> (spare bytes inside the stores, any full)
        self.alarms: set[str] = set()
        self.memory_used = 0
        self.disk_free = 0
        self.disk_available = 0  # disk_free and the stores' spare bytes
        self.reserve = node_reserve(data_dir)
        self._task: asyncio.Task | None = None

    @property
    def memory_limit(self) -> int:
        return self.memory_bytes or int(total_memory_bytes() * self.memory_fraction)

    def set_memory_watermark(self, fraction: float | None = None,
                             absolute: int | None = None) -> None:
        if absolute is not None:
            self.memory_bytes = absolute
        if fraction is not None:
            self.memory_fraction = fraction
            self.memory_bytes = 0
        self.check()

    def set_disk_free_limit(self, limit: int) -> None:
        self.disk_free_limit = limit
        self.check()

    def start(self) -> None:
        self.check()
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception:
                log.exception("resource check failed")

    def check(self) -> None:
        self.memory_used = rss_bytes()
        self.disk_free = disk_free_bytes(self.data_dir)
        if self.reserve.owed and self.disk_free > 2 * self.reserve.size:
            self.reserve.restore()  # released when the node started on a full disk
        spare, full = (self.store_space(self.disk_free_limit) if self.store_space is not None
                       else (0, False))
        self.disk_available = self.disk_free + spare
        alarms = set()
        if self.memory_used > self.memory_limit:
            alarms.add(MEMORY)
        if self.disk_available < self.disk_free_limit or full:
            alarms.add(DISK)
        if alarms != self.alarms:
            for a in alarms - self.alarms:
                log.warning("%s resource limit alarm set on node: memory %d/%d bytes, disk "
                            "free %d, available to the stores %d (limit %d)", a,
                            self.memory_used, self.memory_limit, self.disk_free,
                            self.disk_available, self.disk_free_limit)
            for a in self.alarms - alarms:
                log.warning("%s resource limit alarm cleared", a)
            self.alarms = alarms
            self.on_change(alarms)

    def status(self) -> dict[str, Any]:
        return {"alarms": sorted(self.alarms), "mem_used": self.memory_used,
                "mem_limit": self.memory_limit, "mem_alarm": MEMORY in self.alarms,
                "disk_free": self.disk_free, "disk_free_limit": self.disk_free_limit,
                "disk_free_alarm": DISK in self.alarms}
