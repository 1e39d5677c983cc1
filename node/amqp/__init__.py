"""AMQP 0-9-1 itself: the sans-I/O codec (generated spec tables, field tables, frames), the
protocol core's state machine, a message as it arrived, and the protocol's facts (reply
codes, errors with RabbitMQ's texts).  Imports nothing else of the node."""
