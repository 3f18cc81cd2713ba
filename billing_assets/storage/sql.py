"""Bound, typed SQL and reading results in bulk, shared by the query modules."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from sqlalchemy import BigInteger, Connection, Integer, String, Text, bindparam, text

from billing_assets.storage.dialect import is_postgres
from billing_assets.storage.times import to_utc_series
from billing_assets.storage.types import UTCDateTime


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


HASHING_WORK_MEM = "64MB"  # per hash node of one of these queries, for the transaction only


def prefer_hashing(connection: Connection) -> None:
    """For the rest of this transaction, make PostgreSQL hash-join and hash-aggregate our range joins.

    Freshly written time ranges lie past the planner's statistics, so it
    estimates one row per range and joins on collected_at alone (a nested
    loop or merge join through the (source_id, collected_at) index), which is
    quadratic in series per snapshot (bench/RESULTS.md, round 2).
    Every join we run on those ranges is between two bounded range scans,
    where a hash join on the full key is linear whatever the estimates say.
    The same one-row estimate makes it group the ledger side by sorting
    (~77 k rows a source-hour on a five-column text key, spilled to disk at
    the default work_mem) where one hash table does: with sorting
    discouraged and room for that table (a source-hour's keys need ~15 MB),
    the ledger check's query cost 0.36 s a source-hour before and ~0.19 s after.
    """
    if is_postgres(connection):
        connection.exec_driver_sql("SET LOCAL enable_nestloop = off")
        connection.exec_driver_sql("SET LOCAL enable_mergejoin = off")
        connection.exec_driver_sql("SET LOCAL enable_sort = off")
        connection.exec_driver_sql(f"SET LOCAL work_mem = '{HASHING_WORK_MEM}'")
