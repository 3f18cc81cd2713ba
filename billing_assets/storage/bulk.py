"""Bulk writes inside the caller's transaction: COPY on PostgreSQL, executemany on SQLite.

The row-at-a-time SQLAlchemy paths cost microseconds per value (dict
building, TypeDecorator calls); at millions of samples per run that is the
whole budget. Values are always sent as data (COPY rows or bound
parameters); only identifiers from our own schema are spliced into SQL text.
`copy_columns` goes further for large appends: whole numpy columns, encoded
to binary COPY without a Python step per row (storage/binary_copy.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from billing_assets.storage import binary_copy
from billing_assets.storage.dialect import is_postgres
from billing_assets.storage.times import sqlite_time_text


def upsert(connection: Connection, table, rows: list[dict], key: Sequence[str], update: Sequence[str]) -> None:
    if not rows:
        return
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=list(key), set_={column: statement.excluded[column] for column in update}
    )
    connection.execute(statement, rows)


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


def copy_columns(
    connection: Connection, table: str, columns: Mapping[str, binary_copy.Column], chunk_rows: int = binary_copy.CHUNK_ROWS
) -> int:
    """Append whole columns ({name: binary_copy.int8(...), ...}, all one length); returns rows written.

    PostgreSQL: `COPY ... (FORMAT BINARY)` in chunks of `chunk_rows`. SQLite:
    executemany of the same values in the forms `types.py` stores there. A
    racing duplicate raises SQLAlchemy's IntegrityError, as `bulk_insert` does.
    """
    rows = binary_copy.row_count(list(columns.values()))
    if rows == 0:
        return 0
    names = ", ".join(columns)
    if not is_postgres(connection):
        values = [_sqlite_values(column) for column in columns.values()]
        return _executemany(connection, f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})", zip(*values))
    # fixed-width columns first: each row group is then one slice of the fixed bytes and one of text (binary_copy)
    ordered = sorted(columns.items(), key=lambda item: item[1].kind == "text")
    statement = f"COPY {table} ({', '.join(name for name, _ in ordered)}) FROM STDIN (FORMAT BINARY)"
    raw = connection.connection.driver_connection
    with _driver_errors(connection)(statement), raw.cursor() as cursor, cursor.copy(statement) as copy:
        for chunk in binary_copy.encode([column for _, column in ordered], chunk_rows):
            copy.write(chunk)
    return rows


def _sqlite_values(column: binary_copy.Column) -> list:
    """A column as SQLite parameters: times as `SQLITE_TIME_FORMAT` text, decimals as fixed-point text (`Money`)."""
    if column.kind == "timestamptz":
        return sqlite_time_text(column.values).tolist()
    if column.kind == "numeric":
        return _decimal_text(column.values, column.scale).tolist()
    return column.values.tolist()


def _decimal_text(scaled: np.ndarray, scale: int) -> np.ndarray:
    """int64 multiples of 10**-scale as exact decimal text ("-1.500000000"), column at a time."""
    negative, whole, fraction = binary_copy.split_decimal(scaled, scale)
    digits = whole.astype(str)
    if scale:
        digits = np.strings.add(np.strings.add(digits, "."), np.strings.zfill(fraction.astype(str), scale))
    return np.where(negative, np.strings.add("-", digits), digits)


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
    staging = staging_table(connection, table, columns)
    written = bulk_insert(connection, staging, columns, rows)
    connection.exec_driver_sql(f"INSERT INTO {table} ({names}) SELECT {names} FROM {staging} {conflict}")
    connection.exec_driver_sql(f"DROP TABLE {staging}")
    return written


def staging_table(connection: Connection, table: str, columns: Sequence[str]) -> str:
    """An empty temporary copy of `table`'s `columns` for this transaction (PostgreSQL): load it, merge from it, drop it."""
    staging = f"_bulk_{table}"
    connection.exec_driver_sql(f"DROP TABLE IF EXISTS {staging}")
    connection.exec_driver_sql(
        f"CREATE TEMPORARY TABLE {staging} ON COMMIT DROP AS SELECT {', '.join(columns)} FROM {table} WITH NO DATA"
    )
    return staging


def _batches(rows: Iterable[tuple], size: int) -> Iterator[list[tuple]]:
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def bulk_insert_new(connection: Connection, table: str, columns: Sequence[str], rows: list[tuple]) -> int:
    """Insert the rows no unique constraint already holds (COPY into a temporary table, then one
    INSERT … ON CONFLICT DO NOTHING on PostgreSQL); how many were new."""
    names = ", ".join(columns)
    if not is_postgres(connection):
        cursor = connection.connection.driver_connection.cursor()
        try:
            cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING", rows)
            return max(cursor.rowcount, 0)
        finally:
            cursor.close()
    staging = f"_new_{table}"
    connection.exec_driver_sql(f"CREATE TEMPORARY TABLE {staging} ON COMMIT DROP AS SELECT {names} FROM {table} WITH NO DATA")
    bulk_insert(connection, staging, columns, rows)
    added = connection.exec_driver_sql(f"INSERT INTO {table} ({names}) SELECT DISTINCT {names} FROM {staging} ON CONFLICT DO NOTHING").rowcount
    connection.exec_driver_sql(f"DROP TABLE {staging}")
    return int(added or 0)
