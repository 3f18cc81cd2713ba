"""Per-minute figures of one source's window: what each minute partition's materialization shows.

One grouped query per asset and slice, never one per minute: a range run of
a day has 1,440 minutes, and Dagster already writes one event per minute.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from billing_assets.storage.dialect import is_postgres
from billing_assets.storage.source_series import in_source, with_series
from billing_assets.storage.sql import typed

_RANGE = "source_id = :source_id AND {column} >= :start AND {column} < :end"


def _minute_of(connection: Connection, column: str) -> str:
    """The minute a time column falls in; SQLite stores `YYYY-MM-DD HH:MM:SS.ffffff` text (storage/times.py)."""
    return f"date_trunc('minute', {column})" if is_postgres(connection) else f"substr({column}, 1, 16)"


def _grouped(connection: Connection, sql: str, params: dict, width: int) -> dict[datetime, tuple[int, ...]]:
    statement = typed(sql, {"start": "ts", "end": "ts"}, {"minute": "ts", **{f"v{i}": "int" for i in range(width)}})
    return {row[0]: tuple(int(value or 0) for value in row[1:]) for row in connection.execute(statement, params)}


def stored_samples(connection: Connection, source_id: str, start: datetime, end: datetime) -> dict[datetime, int]:
    """Samples kept per minute of [start, end): read from `usage_sample_rows`, the table behind the
    `usage_samples` view, by its primary key per series of the source (storage/source_series.py)."""
    minute = _minute_of(connection, "collected_at")
    sql = f"""
        SELECT {minute} AS minute, COUNT(*) AS v0 FROM usage_sample_rows
        WHERE {in_source(connection)} AND collected_at >= :start AND collected_at < :end GROUP BY {minute}
    """
    rows = _grouped(connection, sql, with_series(connection, {"source_id": source_id, "start": start, "end": end}), 1)
    return {key: values[0] for key, values in rows.items()}


def bucket_totals(connection: Connection, source_id: str, start: datetime, end: datetime) -> dict[datetime, tuple[int, int, int, int]]:
    """(buckets, samples, uplink bytes, downlink bytes) per minute of [start, end)."""
    sql = f"""
        SELECT bucket_start AS minute, COUNT(*) AS v0, SUM(sample_count) AS v1,
               SUM(uplink_bytes) AS v2, SUM(downlink_bytes) AS v3
        FROM usage_minute_buckets WHERE {_RANGE.format(column="bucket_start")} GROUP BY bucket_start
    """
    return _grouped(connection, sql, {"source_id": source_id, "start": start, "end": end}, 4)


def ledger_totals(
    connection: Connection, source_id: str, start: datetime, end: datetime, run_id: str
) -> dict[datetime, tuple[int, int, int]]:
    """(entries, net amount in nanos, entries appended by `run_id`) per minute of [start, end)."""
    sql = f"""
        SELECT bucket_start AS minute, COUNT(*) AS v0, SUM(amount_nanos) AS v1,
               SUM(CASE WHEN run_id = :run_id THEN 1 ELSE 0 END) AS v2
        FROM billing_ledger WHERE {_RANGE.format(column="bucket_start")} GROUP BY bucket_start
    """
    return _grouped(connection, sql, {"source_id": source_id, "start": start, "end": end, "run_id": run_id}, 3)
