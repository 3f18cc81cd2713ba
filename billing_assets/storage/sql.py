"""Small helpers for bound, typed SQL shared by the query modules."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import TypeVar

import pandas as pd
from sqlalchemy import BigInteger, Connection, Engine, Integer, String, Text, bindparam, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.dialects import postgresql, sqlite

from billing_assets.storage.types import UTCDateTime

T = TypeVar("T")

TYPES = {"ts": UTCDateTime(), "int": BigInteger(), "str": String(), "text": Text(), "i32": Integer()}


def typed(sql: str, params: dict[str, str] | None = None, columns: dict[str, str] | None = None):
    """`text()` whose time parameters and result columns go through `UTCDateTime`."""
    statement = text(sql)
    if params:
        statement = statement.bindparams(*(bindparam(name, type_=TYPES[kind]) for name, kind in params.items()))
    if columns:
        statement = statement.columns(**{name: TYPES[kind] for name, kind in columns.items()})
        statement.billing_time_columns = tuple(name for name, kind in columns.items() if kind == "ts")
    return statement


def frame(connection: Connection, statement, params: dict, columns: Sequence[str]) -> pd.DataFrame:
    """Query result as a DataFrame; `ts` result columns become datetime64[UTC].

    Rows come straight from the driver cursor and time columns are parsed in
    bulk: SQLAlchemy's per-row processing cost ~1 µs per value.
    """
    times = [name for name in getattr(statement, "billing_time_columns", ()) if name in columns]
    return read_frame(connection, statement, params, columns, times, raw_times=True)


def upsert(connection: Connection, table, rows: list[dict], key: Sequence[str], update: Sequence[str]) -> None:
    if not rows:
        return
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=list(key), set_={column: statement.excluded[column] for column in update}
    )
    connection.execute(statement, rows)


RACE_ATTEMPTS = 3


def in_transaction_retrying_races(engine: Engine, work: Callable[[Connection], T], attempts: int = RACE_ATTEMPTS) -> T:
    """`work(connection)` in its own transaction, run again from scratch when a
    unique constraint refused it because a racing writer got there first.

    The retry re-reads what is stored, so it writes only what is still missing:
    the constraint, not the Python read before it, decides what is written once.
    """
    for attempt in range(1, attempts + 1):
        try:
            with engine.begin() as connection:
                return work(connection)
        except IntegrityError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable: attempts must be >= 1")


def source_lock(connection: Connection, scope: str, source_id: str) -> None:
    """Serialise writers of one source's `scope` on PostgreSQL for the transaction.

    SQLite needs nothing: every write transaction there is BEGIN IMMEDIATE, so
    writers are serial already.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"{scope}:{source_id}"}
        )


def as_utc(value: datetime) -> pd.Timestamp:
    return pd.Timestamp(value).tz_convert("UTC")


# --- Bulk paths -------------------------------------------------------------
# The row-at-a-time SQLAlchemy paths above cost microseconds per value (dict
# building, TypeDecorator calls); at millions of samples per run that is the
# whole budget. The helpers below talk to the driver inside the caller's
# transaction: COPY on PostgreSQL, executemany with tuples on SQLite. Values
# are always sent as data (COPY rows or bound parameters); only identifiers
# from our own schema are spliced into the SQL text.

SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # what SQLAlchemy's SQLite DATETIME stores


def is_postgres(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql"


def time_param(connection: Connection) -> Callable[[datetime], object]:
    """Converter from an aware datetime to what the driver stores for `UTCDateTime`."""
    if is_postgres(connection):  # text: psycopg's datetime dumper costs more than the rest of a row
        return lambda value: value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    return lambda value: value.astimezone(timezone.utc).strftime(SQLITE_TIME_FORMAT)


def time_column(connection: Connection, values: pd.Series) -> list:
    """Vectorised `time_param` for a UTC datetime column (one strftime, no per-row objects)."""
    utc = pd.to_datetime(values, utc=True)
    if is_postgres(connection):
        return list(utc.dt.strftime("%Y-%m-%d %H:%M:%S.%f+00"))
    return list(utc.dt.strftime(SQLITE_TIME_FORMAT))


def time_select(connection: Connection, column: str) -> str:
    """SQL for reading a `UTCDateTime` column in a form `to_utc_series` parses in bulk."""
    if is_postgres(connection):
        return f"CAST(EXTRACT(EPOCH FROM {column}) * 1000000 AS BIGINT)"
    return column


def to_utc_series(connection: Connection, values: pd.Series, raw_times: bool = False) -> pd.Series:
    """Bulk parse of time values read via `time_select` (or, with `raw_times`, as the driver returns them)."""
    if is_postgres(connection) and not raw_times:
        return pd.to_datetime(values.astype("int64"), unit="us", utc=True)
    if is_postgres(connection):
        return pd.to_datetime(values, utc=True)
    return pd.to_datetime(values, format="ISO8601", utc=True)


def read_frame(
    connection: Connection,
    statement,
    params: dict,
    columns: Sequence[str],
    times: Sequence[str] = (),
    raw_times: bool = False,
) -> pd.DataFrame:
    """Rows into a DataFrame with no per-row type processing; `times` parsed in bulk.

    Unless `raw_times`, the statement must select each of `times` through `time_select`.
    """
    result = connection.execute(statement, params)
    try:
        rows = result.cursor.fetchall() if result.cursor is not None else []
    finally:
        result.close()
    data = pd.DataFrame(rows, columns=list(columns)) if rows else pd.DataFrame({c: [] for c in columns})
    for column in times:
        data[column] = (
            to_utc_series(connection, data[column], raw_times) if len(data) else pd.Series(dtype="datetime64[us, UTC]")
        )
    return data


def _driver_errors(connection: Connection):
    """Driver exceptions re-raised as SQLAlchemy's, so callers' `except IntegrityError` keep working."""
    from contextlib import contextmanager

    from sqlalchemy import exc

    @contextmanager
    def translate(statement: str):
        dbapi = connection.dialect.dbapi
        try:
            yield
        except dbapi.IntegrityError as error:  # type: ignore[union-attr]
            raise exc.IntegrityError(statement, None, error) from error
        except dbapi.Error as error:  # type: ignore[union-attr]
            raise exc.DBAPIError.instance(statement, None, error, dbapi.Error) from error

    return translate


def bulk_insert(connection: Connection, table: str, columns: Sequence[str], rows: Iterable[tuple]) -> int:
    """Append rows (driver-ready tuples, times via `time_param`/`time_column`) in bulk."""
    names = ", ".join(columns)
    raw = connection.connection.driver_connection
    written = 0
    if is_postgres(connection):
        statement = f"COPY {table} ({names}) FROM STDIN"
        with _driver_errors(connection)(statement), raw.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
                written += 1
        return written
    return _executemany(connection, f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})", rows)


def _executemany(connection: Connection, statement: str, rows: Iterable[tuple]) -> int:
    """SQLite: one prepared statement over batches of driver-ready tuples."""
    cursor = connection.connection.driver_connection.cursor()
    written = 0
    try:
        with _driver_errors(connection)(statement):
            for batch in _batches(rows, 20_000):
                cursor.executemany(statement, batch)
                written += len(batch)
    finally:
        cursor.close()
    return written


def bulk_upsert(
    connection: Connection,
    table: str,
    columns: Sequence[str],
    rows: Iterable[tuple],
    key: Sequence[str],
    update: Sequence[str],
) -> int:
    """Insert-or-update rows in bulk: COPY into a temporary table then one
    INSERT … ON CONFLICT on PostgreSQL; executemany of the same upsert on SQLite."""
    names = ", ".join(columns)
    conflict = f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in update)
    if not is_postgres(connection):
        return _executemany(connection, f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))}) {conflict}", rows)
    staging = f"_bulk_{table}"
    connection.exec_driver_sql(f"DROP TABLE IF EXISTS {staging}")
    connection.exec_driver_sql(
        f"CREATE TEMPORARY TABLE {staging} ON COMMIT DROP AS SELECT {names} FROM {table} WITH NO DATA"
    )
    written = bulk_insert(connection, staging, columns, rows)
    connection.exec_driver_sql(f"INSERT INTO {table} ({names}) SELECT {names} FROM {staging} {conflict}")
    connection.exec_driver_sql(f"DROP TABLE {staging}")
    return written


def _batches(rows: Iterable[tuple], size: int) -> Iterator[list[tuple]]:
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def prefer_hash_joins(connection: Connection) -> None:
    """For the rest of this transaction, make PostgreSQL hash-join our range joins.

    Freshly written time ranges lie past the planner's statistics, so it
    estimates one row per range and joins on collected_at alone (a nested
    loop or merge join through the (source_id, collected_at) index), which is
    quadratic in series per snapshot (bench/RESULTS.md, round 2).
    Every join we run on those ranges is between two bounded range scans,
    where a hash join on the full key is linear whatever the estimates say.
    """
    if is_postgres(connection):
        connection.exec_driver_sql("SET LOCAL enable_nestloop = off")
        connection.exec_driver_sql("SET LOCAL enable_mergejoin = off")
