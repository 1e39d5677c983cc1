"""A live move's progress as an operator follows it: bytes of the snapshot copied so far,
the target's lag (records, bytes) and an estimate of the time left, from the rate at which
the lag went down lately.  Updated by the owner while the move waits for its target; read
by the API (and through it warrenctl and the UI)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

WINDOW = 10.0  # seconds of lag samples the rate is measured over


class MoveProgress:
    def __init__(self, unit: str, target: str) -> None:
        self.unit = unit
        self.target = target
        self.phase = "sync"  # the target catches up; then "drain": publishers paused
        self.started = time.monotonic()
        self.connected = False
        self.copied = 0  # snapshot bytes sent to the target
        self.snapshot_bytes: int | None = None  # the snapshot's size, estimated
        self.lag: dict[str, int] | None = None  # the target's, as the owner counts it
        self._samples: deque[tuple[float, int]] = deque()
        self.updated = 0.0  # when the figures were last taken
        self.changed = asyncio.Event()

    def update(self, connected: bool, copied: int | None, snapshot_bytes: int | None,
               lag: dict[str, int] | None) -> None:
        now = self.updated = time.monotonic()
        self.connected = connected
        if copied is not None:
            self.copied = copied
        if snapshot_bytes is not None:
            self.snapshot_bytes = snapshot_bytes
        self.lag = lag
        if lag is not None:
            self._samples.append((now, int(lag.get("bytes", 0))))
            while len(self._samples) > 2 and now - self._samples[0][0] > WINDOW:
                self._samples.popleft()
        self.changed.set()

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.changed.set()

    def rate(self) -> float | None:
        """Bytes per second the lag went down over the window (None: not going down)."""
        if len(self._samples) < 2:
            return None
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        if t1 <= t0 or b1 >= b0:
            return None
        return (b0 - b1) / (t1 - t0)

    def eta(self) -> float | None:
        """Seconds left at the recent rate (0 once nothing is left to copy)."""
        if self.lag is None:
            return None
        left = int(self.lag.get("bytes", 0))
        if left == 0 and self._samples:
            return 0.0
        rate = self.rate()
        return left / rate if rate else None

    def as_json(self) -> dict[str, Any]:
        rate, eta = self.rate(), self.eta()
        return {"target": self.target, "phase": self.phase, "connected": self.connected,
                "elapsed_s": round(time.monotonic() - self.started, 3),
                "copied_bytes": self.copied, "snapshot_bytes": self.snapshot_bytes,
                "lag": self.lag,
                "rate_bytes_s": None if rate is None else round(rate),
                "eta_s": None if eta is None else round(eta, 1)}
