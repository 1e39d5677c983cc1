"""Clients of this node: the AMQP connection's asyncio adapter, what channel methods mean,
and any-node access (forwarding a client to its vhost's owner).  Nothing below imports it;
it reaches the runtime above through the Protocols it names."""
