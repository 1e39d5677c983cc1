"""Sharded vhosts: the data plane between nodes (queue links, remote queues)."""
