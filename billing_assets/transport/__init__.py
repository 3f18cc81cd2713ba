"""Talking to exporters: TLS trust, authentication, pagination, validation."""
