"""The management HTTP API (RabbitMQ's paths and JSON shapes) served with aiohttp."""
