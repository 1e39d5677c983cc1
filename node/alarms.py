"""Resource alarms, as RabbitMQ raises them: when the node's memory use crosses the high
watermark, or the data directory's free disk space falls below the limit, publishing
connections are blocked (connection.blocked, and their sockets are no longer read) until
every alarm clears (connection.unblocked).  Consumers keep draining meanwhile, since only
connections that publish are blocked."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from typing import Any, Callable

log = logging.getLogger("warren.alarms")

MEMORY, DISK = "memory", "disk"


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


def disk_free_bytes(path: str) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


class ResourceMonitor:
    def __init__(self, data_dir: str, memory_fraction: float, memory_bytes: int,
                 disk_free_limit: int, interval: float,
                 on_change: Callable[[set[str]], None]) -> None:
        self.data_dir = data_dir
        self.memory_fraction = memory_fraction
        self.memory_bytes = memory_bytes  # absolute watermark; 0 = use the fraction
        self.disk_free_limit = disk_free_limit
        self.interval = interval
        self.on_change = on_change
        self.alarms: set[str] = set()
        self.memory_used = 0
        self.disk_free = 0
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
        alarms = set()
        if self.memory_used > self.memory_limit:
            alarms.add(MEMORY)
        if self.disk_free < self.disk_free_limit:
            alarms.add(DISK)
        if alarms != self.alarms:
            for a in alarms - self.alarms:
                log.warning("%s resource limit alarm set on node: memory %d/%d bytes, disk "
                            "free %d (limit %d)", a, self.memory_used, self.memory_limit,
                            self.disk_free, self.disk_free_limit)
            for a in self.alarms - alarms:
                log.warning("%s resource limit alarm cleared", a)
            self.alarms = alarms
            self.on_change(alarms)

    def status(self) -> dict[str, Any]:
        return {"alarms": sorted(self.alarms), "mem_used": self.memory_used,
                "mem_limit": self.memory_limit, "mem_alarm": MEMORY in self.alarms,
                "disk_free": self.disk_free, "disk_free_limit": self.disk_free_limit,
                "disk_free_alarm": DISK in self.alarms}
