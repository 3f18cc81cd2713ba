"""Which stored samples belong to a source: the rows of its series, named by the dictionary.

`usage_sample_rows` has no `source_id` (migration 0013): an index on it cost
~0.45 s of server CPU per source-hour of samples taken in, and the primary key
(series_id, collected_at) answers a source's time range as well, with one
descent per series. The source's series come from `usage_series`: on
PostgreSQL as an array evaluated once (`= ANY(ARRAY(...))`), which the planner
can only use as an index condition on the primary key, so a fresh range past
its statistics cannot lure it into hashing every source's rows of those days
(bench/RESULTS.md, round 9); on SQLite as `IN (subquery)`, which it answers
the same way.
"""

from __future__ import annotations

from sqlalchemy import Connection

from billing_assets.storage.dialect import is_postgres

_OF_SOURCE = "SELECT series_id FROM usage_series WHERE source_id = :{param}"


def in_source(connection: Connection, column: str = "series_id", param: str = "source_id") -> str:
    """SQL condition: `column` (a series id) is one of the series of the source bound as `:param`."""
    return in_source_sql(is_postgres(connection), column, param)


def in_source_sql(postgres: bool, column: str = "series_id", param: str = "source_id") -> str:
    """`in_source` for a dialect known in advance (statements built once per dialect)."""
    series = _OF_SOURCE.format(param=param)
    return f"{column} = ANY(ARRAY({series}))" if postgres else f"{column} IN ({series})"
