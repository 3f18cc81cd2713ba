"""Which database a connection talks to: the one fact every dialect-specific path branches on."""

from __future__ import annotations

from sqlalchemy import Connection, Engine


def is_postgres(connection: Connection | Engine) -> bool:
    return connection.dialect.name == "postgresql"
