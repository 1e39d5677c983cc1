"""Queues and consumers: message order, delivery, acknowledgement, requeue and paging
to the vhost's message store.  Must not import the AMQP connection code."""
