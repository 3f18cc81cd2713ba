"""Which stored samples belong to a source: the rows of its series, named by the dictionary.

`usage_sample_rows` has no `source_id` (migration 0013): an index on it cost
~0.45 s of server CPU per source-hour of samples taken in, and the primary key
(series_id, collected_at) answers a source's time range as well, with one
descent per series.

On PostgreSQL the source's series ids are read first and bound as one array
(`series_id = ANY(:series_ids)`). Bound, the array is a constant to the
planner: an index condition it can only use on the primary key, and, when a
long range makes the bitmap lossy, a hashed membership test in the recheck.
Written as `= ANY(ARRAY(subquery))` instead, the recheck searched the array
linearly for every row of every lossy page: a count over 6 hours of a
10,000-user source took 27 s instead of well under one (bench/RESULTS.md,
round 12). On SQLite the condition is `IN (subquery)`, answered from the
primary key the same way.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from billing_assets.storage.dialect import is_postgres

_OF_SOURCE = "SELECT series_id FROM usage_series WHERE source_id = :{param}"


def in_source(connection: Connection, column: str = "series_id", param: str = "source_id") -> str:
    """SQL condition: `column` (a series id) is one of the series of the source bound as `:param`.

    On PostgreSQL the statement also needs `series_ids` bound (`with_series`).
    """
    return in_source_sql(is_postgres(connection), column, param)


def in_source_sql(postgres: bool, column: str = "series_id", param: str = "source_id") -> str:
    """`in_source` for a dialect known in advance (statements built once per dialect)."""
    if postgres:
        return f"{column} = ANY(CAST(:series_ids AS integer[]))"
    return f"{column} IN ({_OF_SOURCE.format(param=param)})"


def series_ids(connection: Connection, source_id: str) -> list[int]:
    """The source's series ids, as `in_source` binds them on PostgreSQL."""
    return list(connection.execute(text(_OF_SOURCE.format(param="source_id")), {"source_id": source_id}).scalars())


def with_series(connection: Connection, params: dict, param: str = "source_id", ids: list[int] | None = None) -> dict:
    """`params` plus what `in_source` needs bound on this dialect (nothing extra on SQLite).

    `ids`: the source's series ids, when the caller has just read the dictionary itself.
    """
    if not is_postgres(connection):
        return params
    return {**params, "series_ids": series_ids(connection, params[param]) if ids is None else list(ids)}
