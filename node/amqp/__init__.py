"""AMQP 0-9-1 wire protocol: the sans-I/O codec (generated spec tables, field tables,
frames, content properties) and the connection/channel protocol handlers."""
