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
from billing_assets.storage.bulk import upsert


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


def _write(connection: Connection, source_id: str, **changes) -> None:
    """Upsert one checkpoint row, changing only the given columns."""
    row = {column: None for column in _COLUMNS}
    row.update(read_checkpoint(connection, source_id) or {}, source_id=source_id, **changes)
    row["consecutive_failures"] = int(row.get("consecutive_failures") or 0)
    upsert(connection, source_checkpoints, [row], key=["source_id"], update=list(changes))


_COLUMNS = [column.name for column in source_checkpoints.columns]


def record_success(
    connection: Connection, source_id: str, since: datetime, until: datetime, cursor: str | None, now: datetime
) -> None:
    current = (read_checkpoint(connection, source_id) or {}).get("last_successful_until")
    _write(
        connection, source_id,
        last_successful_until=next_high_water(current, since, until), last_cursor=cursor,
        last_attempted_at=now, last_succeeded_at=now, last_error=None, consecutive_failures=0,
    )


def record_failure(connection: Connection, source_id: str, error: str, now: datetime) -> None:
    failures = int((read_checkpoint(connection, source_id) or {}).get("consecutive_failures") or 0)
    _write(connection, source_id, last_attempted_at=now, last_error=error[:2000], consecutive_failures=failures + 1)


def record_attempt_success(connection: Connection, source_id: str, now: datetime) -> None:
    """A successful pull that proves nothing about completeness (legacy `/latest`):
    clears the error and failure count but never moves `last_successful_until`."""
    _write(connection, source_id, last_attempted_at=now, last_succeeded_at=now, last_error=None, consecutive_failures=0)
