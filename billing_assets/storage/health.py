"""Per-source health facts from the billing database: coverage, conflicts, checkpoint.

Coverage comes from `exporter_pages`: every successful fetch records at least
one page (even an empty window), in the same transaction as its data, so the
union of fetched ranges is exactly what has been collected. One row per fetch
range, merged in Python; nothing per minute.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from billing_assets.storage.sql import typed

FETCHED_RANGES = typed(
    """
    SELECT DISTINCT fetch_since, fetch_until FROM exporter_pages
    WHERE source_id = :source_id AND fetch_until > :start AND fetch_since < :end
    ORDER BY fetch_since
    """,
    {"start": "ts", "end": "ts"},
    {"fetch_since": "ts", "fetch_until": "ts"},
)

CONFLICT_COUNTS = typed(
    "SELECT source_id, COUNT(*) FROM sample_conflicts GROUP BY source_id",
)


def fetched_ranges(connection: Connection, source_id: str, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    rows = connection.execute(FETCHED_RANGES, {"source_id": source_id, "start": start, "end": end}).all()
    return [(row[0], row[1]) for row in rows]


def uncovered(ranges: list[tuple[datetime, datetime]], start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """Gaps of [start, end) not covered by any of `ranges` (sorted by start)."""
    gaps, cursor = [], start
    for since, until in sorted(ranges):
        if since > cursor:
            gaps.append((cursor, min(since, end)))
        cursor = max(cursor, until)
        if cursor >= end:
            break
    if cursor < end:
        gaps.append((cursor, end))
    return [(a, b) for a, b in gaps if b > a]


def missing_windows(connection: Connection, source_id: str, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    if end <= start:
        return []
    return uncovered(fetched_ranges(connection, source_id, start, end), start, end)


def conflict_counts(connection: Connection) -> dict[str, int]:
    return {row[0]: int(row[1]) for row in connection.execute(CONFLICT_COUNTS).all()}
