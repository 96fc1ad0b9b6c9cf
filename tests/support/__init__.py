"""Shared test helpers: isolated nats-server, service processes, bus readers."""
