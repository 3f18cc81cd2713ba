"""Engines for `BILLING_DATABASE_URL`, and the schema brought up to date by alembic.

The default is an embedded SQLite file so the demo needs no server; WAL mode
and a busy timeout let Dagster's step processes and the CLI share it.
Production points the URL at PostgreSQL (psycopg 3).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text

DEFAULT_URL = "sqlite:///.billing/billing.sqlite"
MIGRATIONS = Path(__file__).parent / "migrations"
_engines: dict[str, Engine] = {}
_migrated: set[str] = set()
_lock = threading.Lock()


def database_url() -> str:
    return os.environ.get("BILLING_DATABASE_URL") or DEFAULT_URL


def redact_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _normalise(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def get_engine(url: str | None = None) -> Engine:
    url = _normalise(url or database_url())
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _create(url)
            _engines[url] = engine
        return engine


def _create(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(connection):
            # Writers take the write lock up front (a deferred transaction that
            # later writes can fail with SQLITE_BUSY instead of waiting);
            # readers (`read_only`) must not, or they queue behind a long fetch.
            deferred = connection.get_execution_options().get("billing_read_only")
            connection.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)


def read_only(engine: Engine) -> Engine:
    """The same pool, for transactions that only read (no write lock on SQLite)."""
    return engine.execution_options(billing_read_only=True)


def alembic_config(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def migrate(engine: Engine | None = None) -> Engine:
    """Bring the schema to head once per process; safe when runs race on PostgreSQL."""
    engine = engine or get_engine()
    key = str(engine.url)
    if key in _migrated:
        return engine
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(7261001)"))
        command.upgrade(alembic_config(connection), "head")
    _migrated.add(key)
    return engine


def reset_caches() -> None:
    """Tests switch databases within one process."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _migrated.clear()
