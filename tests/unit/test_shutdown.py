"""SIGTERM stops a node whatever it is doing (node/shutdown.py): here its event loop is
stuck in one long synchronous step, as while it recovers large queues at start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.nodeproc import REPO

STUCK = """
import asyncio, time
from node.shutdown import Shutdown

async def main():
    shutdown = Shutdown(asyncio.get_running_loop(), deadline=1.0)
    shutdown.install()
    shutdown.at("recovering queues")
    print("busy", flush=True)
    time.sleep(120)  # the loop never gets to run anything else

asyncio.run(main())
"""


def test_sigterm_ends_a_node_whose_loop_is_stuck_naming_the_step():
    proc = subprocess.Popen([sys.executable, "-c", STUCK], cwd=REPO, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "busy\n"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)  # a bound for a hung test, not a figure
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert err.strip().splitlines()[-1] == (
        "warren: shutdown did not finish within 1 s (still recovering queues); exiting now: "
        "everything confirmed is already on disk")
