"""The node's process and host figures (memory, file descriptors, disk) and its resource
alarms, read from /proc and the filesystem; shared by /api/nodes, health checks and /metrics."""

from __future__ import annotations

import os
import resource
import shutil
from typing import Any

# RabbitMQ's defaults: vm_memory_high_watermark 0.6 of RAM, disk_free_limit 50 MB
MEMORY_WATERMARK = 0.6
DISK_FREE_LIMIT = 50 * 1000 * 1000


def resident_memory() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def memory_limit(broker: Any = None) -> int:
    """The memory high watermark: the broker's resource monitor's when it has one."""
    monitor = getattr(broker, "resources", None)
    if monitor is not None:
        return int(monitor.memory_limit)
    return int(total_memory() * MEMORY_WATERMARK)


def disk_free_limit(broker: Any = None) -> int:
    monitor = getattr(broker, "resources", None)
    if monitor is not None:
        return int(monitor.disk_free_limit)
    return DISK_FREE_LIMIT


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def max_fds() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def disk_free(path: str) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def alarms(broker: Any) -> list[str]:
    """Resources in alarm on this node ("memory", "disk").  The broker's own view wins when
    it keeps one (flow control is its job); otherwise judge from RabbitMQ's defaults."""
    own = getattr(broker, "alarms", None)
    if own is not None:
        return sorted(str(a) for a in own)
    out = []
    limit = memory_limit(broker)
    if limit and resident_memory() > limit:
        out.append("memory")
    if disk_free(broker.settings.data_dir) < disk_free_limit(broker):
        out.append("disk")
    return out
