"""Per-source collection progress.

`last_successful_until` is a contiguous high-water mark: it only moves when
the fetched range starts at or before it, so a replay of an old range never
moves it back and a range fetched beyond a gap never hides the gap. It is
written in the fetch's own transaction, so it never runs ahead of the data.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, select

from billing_assets.storage.schema import source_checkpoints
from billing_assets.storage.sql import upsert


def read_checkpoint(connection: Connection, source_id: str) -> dict | None:
    row = connection.execute(select(source_checkpoints).where(source_checkpoints.c.source_id == source_id)).mappings().first()
    return dict(row) if row else None


def read_all(connection: Connection) -> dict[str, dict]:
    return {row["source_id"]: dict(row) for row in connection.execute(select(source_checkpoints)).mappings()}


def next_high_water(current: datetime | None, fetched_since: datetime, fetched_until: datetime) -> datetime | None:
    if current is None:
        return fetched_until
    if fetched_since <= current < fetched_until:
        return fetched_until
    return current


def record_success(
    connection: Connection, source_id: str, since: datetime, until: datetime, cursor: str | None, now: datetime
) -> None:
    current = read_checkpoint(connection, source_id) or {}
    upsert(
        connection,
        source_checkpoints,
        [
            {
                "source_id": source_id,
                "last_successful_until": next_high_water(current.get("last_successful_until"), since, until),
                "last_cursor": cursor,
                "last_attempted_at": now,
                "last_succeeded_at": now,
                "last_error": None,
                "consecutive_failures": 0,
            }
        ],
        key=["source_id"],
        update=["last_successful_until", "last_cursor", "last_attempted_at", "last_succeeded_at", "last_error", "consecutive_failures"],
    )


def record_failure(connection: Connection, source_id: str, error: str, now: datetime) -> None:
    current = read_checkpoint(connection, source_id) or {}
    upsert(
        connection,
        source_checkpoints,
        [
            {
                "source_id": source_id,
                "last_successful_until": current.get("last_successful_until"),
                "last_cursor": current.get("last_cursor"),
                "last_attempted_at": now,
                "last_succeeded_at": current.get("last_succeeded_at"),
                "last_error": error[:2000],
                "consecutive_failures": int(current.get("consecutive_failures") or 0) + 1,
            }
        ],
        key=["source_id"],
        update=["last_attempted_at", "last_error", "consecutive_failures"],
    )


def record_attempt_success(connection: Connection, source_id: str, now: datetime) -> None:
    """A successful pull that proves nothing about completeness (legacy `/latest`):
    clears the error and failure count but never moves `last_successful_until`."""
    current = read_checkpoint(connection, source_id) or {}
    upsert(
        connection,
        source_checkpoints,
        [
            {
                "source_id": source_id,
                "last_successful_until": current.get("last_successful_until"),
                "last_cursor": current.get("last_cursor"),
                "last_attempted_at": now,
                "last_succeeded_at": now,
                "last_error": None,
                "consecutive_failures": 0,
            }
        ],
        key=["source_id"],
        update=["last_attempted_at", "last_succeeded_at", "last_error", "consecutive_failures"],
    )
