"""Tools beside the broker, which the broker never imports: the generator of the AMQP
codec (`codegen`, run at development time) and `warren perf`, the load generator."""
