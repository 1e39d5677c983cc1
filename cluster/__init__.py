"""The cluster: the Raft-replicated definitions (pysyncobj) with membership and vhost
placement, and the replication of vhost stores between nodes (the stream, the in-sync set,
failover, fencing).  Message records pass through here as opaque store records; it knows
nothing of client sockets or AMQP frames."""
