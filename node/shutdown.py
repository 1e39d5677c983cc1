"""SIGTERM and SIGINT: a graceful stop that is also a prompt one.

The node stops in order (listeners, clients, replication, stores, Raft), but nothing it
holds needs that order to stay correct: a message is confirmed only once LMDB committed it
with fsync, and a definition change only once the Raft journal is fsynced, so the state on
disk after any instant is one a kill -9 would leave, which every start recovers from.  A
supervisor (systemd's TimeoutStopSec, compose's stop_grace_period, Kubernetes) waits a few
seconds before it kills anyway; the node must not make it.  So the first signal starts a
deadline on a thread of its own: if the graceful stop has not finished by then (a store
still committing a large backlog, a snapshot reader, a thread pool waiting for a long
read, an event loop busy recovering queues), the node says which step it was in and exits.

The handler is a plain `signal.signal` one, not the event loop's: Python runs it between
two bytecodes of the main thread even while the loop is busy in a long synchronous step
(queue recovery at start), which the loop's own handler would wait for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger("warren")

DEADLINE = 4.0  # seconds from the signal to exit, whatever is left (promised: 5)


class Shutdown:
    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float = DEADLINE) -> None:
        self.loop = loop
        self.deadline = deadline
        self.requested = asyncio.Event()
        self.step = "starting"  # what the node is doing, for the deadline's last line
        self._signalled_at: float | None = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self._signalled_at is not None:
            return  # one deadline is enough; a second ^C changes nothing
        self._signalled_at = time.monotonic()
        threading.Thread(target=self._enforce, name="shutdown-deadline", daemon=True).start()
        try:
            self.loop.call_soon_threadsafe(self.requested.set)
        except RuntimeError:  # the loop is closed: the process is ending anyway
            pass

    def at(self, step: str) -> None:
        self.step = step

    def _enforce(self) -> None:
        time.sleep(self.deadline)
        line = (f"warren: shutdown did not finish within {self.deadline:g} s (still "
                f"{self.step}); exiting now: everything confirmed is already on disk")
        try:
            log.warning("%s", line)
            for handler in logging.getLogger().handlers:
                handler.flush()
            print(line, file=sys.stderr, flush=True)
        finally:
            os._exit(0)
