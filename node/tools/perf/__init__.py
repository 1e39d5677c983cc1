"""`warren perf`: a PerfTest-like AMQP load generator (worker processes, pre-encoded frames).
A tool beside the broker, not part of it: nothing in the broker imports this package."""

from node.tools.perf.generator import Topology, main, parse, run

__all__ = ["Topology", "main", "parse", "run"]
