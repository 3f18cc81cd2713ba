"""Staging what the exporter delivered, exactly as received (fetch's output).

Staged rows are replaced per fetched range: the newest fetch of a range is
what dedup reads next. Duplicates and conflicts are kept here on purpose;
deciding what to bill is dedup's job, and it needs to see them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Connection, delete

from billing_assets.storage.schema import exporter_pages, exporter_snapshot_rows

INSERT_BATCH = 5_000


def clear_staged(connection: Connection, source_id: str, since: datetime, until: datetime) -> int:
    table = exporter_snapshot_rows
    result = connection.execute(
        delete(table).where(table.c.source_id == source_id, table.c.collected_at >= since, table.c.collected_at < until)
    )
    return result.rowcount or 0


def stage_rows(connection: Connection, rows: Iterable[dict]) -> int:
    batch: list[dict] = []
    written = 0
    for row in rows:
        batch.append(row)
        if len(batch) >= INSERT_BATCH:
            connection.execute(exporter_snapshot_rows.insert(), batch)
            written += len(batch)
            batch = []
    if batch:
        connection.execute(exporter_snapshot_rows.insert(), batch)
        written += len(batch)
    return written


def record_page(connection: Connection, **values) -> None:
    connection.execute(exporter_pages.insert(), [values])
