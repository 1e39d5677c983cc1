"""Durable bytes: one LMDB environment per vhost holding queue messages, with a group-commit
writer thread and recovery.  Knows nothing of AMQP, sockets or Raft."""
