"""Small helpers for bound, typed SQL shared by the query modules."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import pandas as pd
from sqlalchemy import BigInteger, Connection, Integer, String, Text, bindparam, text
from sqlalchemy.dialects import postgresql, sqlite

from billing_assets.storage.types import UTCDateTime

TYPES = {"ts": UTCDateTime(), "int": BigInteger(), "str": String(), "text": Text(), "i32": Integer()}


def typed(sql: str, params: dict[str, str] | None = None, columns: dict[str, str] | None = None):
    """`text()` whose time parameters and result columns go through `UTCDateTime`."""
    statement = text(sql)
    if params:
        statement = statement.bindparams(*(bindparam(name, type_=TYPES[kind]) for name, kind in params.items()))
    if columns:
        statement = statement.columns(**{name: TYPES[kind] for name, kind in columns.items()})
    return statement


def frame(connection: Connection, statement, params: dict, columns: Sequence[str]) -> pd.DataFrame:
    rows = connection.execute(statement, params).all()
    result = pd.DataFrame.from_records(rows, columns=list(columns))
    return result


def upsert(connection: Connection, table, rows: list[dict], key: Sequence[str], update: Sequence[str]) -> None:
    if not rows:
        return
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=list(key), set_={column: statement.excluded[column] for column in update}
    )
    connection.execute(statement, rows)


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
