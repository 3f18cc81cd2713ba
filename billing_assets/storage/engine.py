"""Engines for `BILLING_DATABASE_URL`, and the schema brought up to date by alembic.

The default is an embedded SQLite file so the demo needs no server; WAL mode
and a busy timeout let Dagster's step processes and the CLI share it.
Production points the URL at PostgreSQL (psycopg 3).

Readers that must never write (`billing status`, checks, sensors) get a
separate engine from `get_read_engine`: it never migrates, never switches the
journal mode, and the database itself refuses writes (SQLite `mode=ro`,
PostgreSQL `default_transaction_read_only`), so it works on a read-only file
or directory and on a replica or a SELECT-only role.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text

from billing_assets.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"
_engines: dict[str, Engine] = {}
_read_engines: dict[str, Engine] = {}
_migrated: set[str] = set()
_verified: set[str] = set()
_lock = threading.Lock()


def database_url() -> str:
    return Settings.from_env().database_url


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


class SchemaNotReady(RuntimeError):
    """The billing database is missing, unmigrated or behind this code; readers cannot fix that."""

    def __init__(self, url: str, current: str | None, head: str | None, reason: str | None = None):
        self.current, self.head = current, head
        where = redact_url(url)
        if reason:
            detail = f"billing database {where} cannot be opened for reading: {reason}"
        elif current is None:
            detail = f"billing database {where} has no billing schema (never migrated)"
        else:
            detail = f"billing database {where} is at schema revision {current}, this code needs {head}"
        super().__init__(f"{detail}; run `billing db upgrade` with a writable connection")


def get_read_engine(url: str | None = None) -> Engine:
    """A cached engine that cannot write, whatever the code above it does."""
    url = _normalise(url or database_url())
    with _lock:
        engine = _read_engines.get(url)
        if engine is None:
            engine = _create_read(url)
            _read_engines[url] = engine
        return engine


def _sqlite_uri(path: str, *, immutable: bool) -> str:
    from urllib.parse import quote

    absolute = quote(str(Path(path).resolve()))
    return f"file:{absolute}?mode=ro" + ("&immutable=1" if immutable else "")


def _create_read(url: str) -> Engine:
    import sqlite3

    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if not path or path == ":memory:":
            raise SchemaNotReady(url, None, None, "an in-memory database has nothing to read")

        def connect():
            # `mode=ro` keeps SQLite's locking, so a reader next to a live writer sees
            # committed data only. A WAL database in a directory where the `-shm` file
            # cannot be created fails to open that way; no writer can be running there
            # either (it would need the same file), so the file is then read as immutable.
            try:
                connection = sqlite3.connect(_sqlite_uri(path, immutable=False), uri=True, timeout=60, check_same_thread=False)
                connection.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            except sqlite3.OperationalError as error:
                if not Path(path).is_file():
                    raise SchemaNotReady(url, None, None, f"no database file at {path}") from error
                connection = sqlite3.connect(_sqlite_uri(path, immutable=True), uri=True, timeout=60, check_same_thread=False)
            connection.execute("PRAGMA query_only=ON")
            connection.execute("PRAGMA busy_timeout=60000")
            connection.isolation_level = None
            return connection

        engine = create_engine(url, creator=connect)

        @event.listens_for(engine, "begin")
        def _begin(connection):
            connection.exec_driver_sql("BEGIN")

        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=4,
        connect_args={"options": "-c default_transaction_read_only=on"},
    )


def schema_revision(connection) -> str | None:
    """The alembic revision of the database, read without creating anything."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def require_schema(url: str | None = None) -> Engine:
    """The read engine, once its database is at this code's head revision.

    Checked once per process: a reader on an old or empty schema would fail later
    with a raw "no such table/column", or read a table whose meaning changed.
    """
    from sqlalchemy.exc import DBAPIError

    url = _normalise(url or database_url())
    engine = get_read_engine(url)
    if url in _verified:
        return engine
    head = head_revision()
    try:
        with engine.connect() as connection:
            current = schema_revision(connection)
    except DBAPIError as error:
        raise SchemaNotReady(url, None, head, str(error.orig).strip().splitlines()[0]) from None
    if current != head:
        raise SchemaNotReady(url, current, head)
    _verified.add(url)
    return engine


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
        for engine in (*_engines.values(), *_read_engines.values()):
            engine.dispose()
        _engines.clear()
        _read_engines.clear()
        _migrated.clear()
        _verified.clear()
