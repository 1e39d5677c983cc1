"""The node's process and host figures (memory, file descriptors, disk) and its resource
alarms, read from /proc and the filesystem; shared by /api/nodes, health checks and /metrics."""

from __future__ import annotations

import os
import resource
from typing import Any

from node.alarms import disk_free_bytes, rss_bytes, total_memory_bytes

# the same probes the resource alarms use, under the names the API and metrics read
resident_memory = rss_bytes
disk_free = disk_free_bytes


def memory_limit(broker: Any) -> int:
    """The memory high watermark the broker's resource monitor applies."""
    monitor = broker.resources
    if monitor is not None:
        return int(monitor.memory_limit)
    return int(total_memory_bytes() * broker.settings.vm_memory_high_watermark)


def disk_free_limit(broker: Any) -> int:
    monitor = broker.resources
    return int(monitor.disk_free_limit if monitor is not None
               else broker.settings.disk_free_limit)


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def max_fds() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def alarms(broker: Any) -> list[str]:
    """Resources in alarm on this node ("memory", "disk"), as its resource monitor sees them."""
    return sorted(str(a) for a in broker.alarms)
