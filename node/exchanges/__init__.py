"""Exchange types, one module each (direct, fanout, topic, headers): given a message's
routing key and headers, name the bindings it matches.  Knows nothing of queues' insides."""
