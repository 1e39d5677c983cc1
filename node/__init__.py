"""The WarrenMQ node process: AMQP codec, connections, channels, exchanges, queues,
management API, CLI and configuration.  Knows nothing of how Raft or LMDB work inside:
it talks to `cluster` and `storage` only through their public classes."""
