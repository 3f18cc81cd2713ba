"""Staging what the exporter delivered, exactly as received (fetch's output).

Staged rows are replaced per fetched range: the newest fetch of a range is
what dedup reads next. Duplicates and conflicts are kept here on purpose;
deciding what to bill is dedup's job, and it needs to see them.

Rows arrive as driver-ready tuples and go in through COPY (PostgreSQL) or
executemany (SQLite): a page holds up to ~10^5 samples, and a dict plus
type processing per sample used to cost more than downloading it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Connection, delete

from billing_assets.storage.schema import exporter_pages, exporter_snapshot_rows
from billing_assets.storage.bulk import bulk_insert

STAGED_COLUMNS = (
    "source_id",
    "node_id",
    "env",
    "uuid",
    "inbound_tag",
    "collected_at",
    "email",
    "uplink_bytes_total",
    "downlink_bytes_total",
    "delivery_seq",
    "fetched_at",
)


def clear_staged(connection: Connection, source_id: str, since: datetime, until: datetime) -> int:
    table = exporter_snapshot_rows
    result = connection.execute(
        delete(table).where(table.c.source_id == source_id, table.c.collected_at >= since, table.c.collected_at < until)
    )
    return result.rowcount or 0


def stage_rows(connection: Connection, rows: Iterable[tuple]) -> int:
    """Append tuples in `STAGED_COLUMNS` order; times already via `times.time_param`."""
    return bulk_insert(connection, exporter_snapshot_rows.name, STAGED_COLUMNS, rows)


def record_page(connection: Connection, **values) -> None:
    connection.execute(exporter_pages.insert(), [values])
