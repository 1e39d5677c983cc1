"""The Raft-replicated definitions (pysyncobj): vhosts, users, permissions, durable
exchanges/queues/bindings, policies and vhost placement.  Knows nothing of client sockets
or AMQP frames; messages never pass through here."""
