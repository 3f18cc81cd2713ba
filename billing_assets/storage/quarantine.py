"""Held deltas (`usage_quarantine`): what the bucket step kept out of billing, and releases.

Unreleased holds are derived, like buckets: recomputing a window replaces
them, so a hold that later data explains (a late sample shortening the gap)
disappears by itself. Released holds are the operator's decision and are
never deleted; the bucket step bills a released hold only while the sample's
delta is still exactly the amount that was released.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd
from sqlalchemy import Connection, and_, func, literal_column, select, update

from billing_assets.core.buckets import HELD_COLUMNS, RELEASED_COLUMNS, SERIES
from billing_assets.core.plausibility import describe_hold
from billing_assets.storage.schema import usage_quarantine as q
from billing_assets.storage.sql import read_frame, typed
from billing_assets.storage.times import minute_select, parse_minute, time_select

# A hold this large is no counter anyone could have used; releasing it could
# overflow a bucket. It stays held; fix the exporter instead.
MAX_RELEASABLE_BYTES = 2**56

_IN_WINDOW = "source_id = :source_id AND collected_at >= :start AND collected_at < :end"
_RANGE = {"start": "ts", "end": "ts"}


def _window_select(connection: Connection, columns: list[str], where: str):
    listed = ", ".join(time_select(connection, c) if c == "collected_at" else c for c in columns)
    return typed(f"SELECT {listed} FROM usage_quarantine WHERE {_IN_WINDOW} AND {where}", _RANGE)


def load_released(connection: Connection, source_id: str, start: datetime, end: datetime) -> pd.DataFrame:
    params = {"source_id": source_id, "start": start, "end": end}
    statement = _window_select(connection, RELEASED_COLUMNS, "released_at IS NOT NULL")
    return read_frame(connection, statement, params, RELEASED_COLUMNS, times=["collected_at"])


def replace_holds(connection: Connection, source_id: str, start: datetime, end: datetime, held: pd.DataFrame, now: datetime) -> int:
    """Make the window's unreleased holds equal `held` (HELD_COLUMNS); rows changed."""
    params = {"source_id": source_id, "start": start, "end": end}
    key = [*SERIES, "collected_at", "held_uplink_bytes", "held_downlink_bytes"]
    stored = read_frame(connection, _window_select(connection, ["id", *key], "released_at IS NULL"), params, ["id", *key], times=["collected_at"])
    wanted = {tuple(row) for row in held[key].itertuples(index=False, name=None)} if not held.empty else set()
    have = {tuple(row[1:]): row[0] for row in stored.itertuples(index=False, name=None)}
    stale = [row_id for row_key, row_id in have.items() if row_key not in wanted]
    if stale:
        connection.execute(q.delete().where(q.c.id.in_(stale)))
    new = [
        dict(zip(HELD_COLUMNS, row), source_id=source_id, detected_at=now)
        for row in held[HELD_COLUMNS].itertuples(index=False, name=None)
        if tuple(row[: len(key)]) not in have
    ]
    for row in new:
        row["collected_at"] = pd.Timestamp(row["collected_at"]).to_pydatetime()
        row["elapsed_us"] = None if pd.isna(row["elapsed_us"]) else int(row["elapsed_us"])
        for column in ("held_uplink_bytes", "held_downlink_bytes", "bound_bytes"):
            row[column] = int(row[column])
    if new:
        connection.execute(q.insert(), new)
    return len(stale) + len(new)


@dataclass(frozen=True)
class Hold:
    id: int
    source_id: str
    uuid: str
    inbound_tag: str
    collected_at: datetime
    held_uplink_bytes: int
    held_downlink_bytes: int
    reason: str
    released_at: datetime | None
    released_by: str | None

    def as_dict(self) -> dict:
        from billing_assets.core.timeutil import format_rfc3339

        return {
            "id": self.id, "source_id": self.source_id, "uuid": self.uuid, "inbound_tag": self.inbound_tag,
            "collected_at": format_rfc3339(self.collected_at), "held_uplink_bytes": self.held_uplink_bytes,
            "held_downlink_bytes": self.held_downlink_bytes, "reason": self.reason,
            "released_at": format_rfc3339(self.released_at) if self.released_at else None, "released_by": self.released_by,
        }


def list_holds(
    connection: Connection, rates: dict[str, int], source_id: str | None = None, released: bool = False,
    since: datetime | None = None, until: datetime | None = None, limit: int = 1000,
) -> list[Hold]:
    """Holds, newest first; `rates` (source -> max_bytes_per_second) words the reason."""
    query = select(q).order_by(q.c.collected_at.desc(), q.c.id.desc()).limit(limit)
    query = query.where(q.c.released_at.isnot(None) if released else q.c.released_at.is_(None))
    if source_id is not None:
        query = query.where(q.c.source_id == source_id)
    if since is not None:
        query = query.where(q.c.collected_at >= since)
    if until is not None:
        query = query.where(q.c.collected_at < until)
    return [_hold(row, rates) for row in connection.execute(query).mappings()]


def _hold(row, rates: dict[str, int]) -> Hold:
    rate = rates.get(row["source_id"])
    reason = (
        describe_hold(row["held_uplink_bytes"], row["held_downlink_bytes"], row["elapsed_us"], row["bound_bytes"], rate)
        if rate else f"held {row['held_uplink_bytes']:,} B up / {row['held_downlink_bytes']:,} B down (bound {row['bound_bytes']:,} B)"
    )
    return Hold(
        row["id"], row["source_id"], row["uuid"], row["inbound_tag"], row["collected_at"],
        row["held_uplink_bytes"], row["held_downlink_bytes"], reason, row["released_at"], row["released_by"],
    )


def holds_per_minute(
    connection: Connection, source_ids: list[str], since: datetime, until: datetime
) -> dict[tuple[str, datetime], tuple[int, int]]:
    """Unreleased holds of [since, until) per (source, minute of collected_at): (count, id of the last recorded).

    One grouped query for a whole range, so a partitioned check's per-window
    verdicts cost one round trip whatever the range length; same holds as
    `list_holds(released=False, since, until)`, counted per minute. The id is
    the minute's last recorded hold, its example (`holds_by_id`).
    """
    if not source_ids:
        return {}
    minute = literal_column(minute_select(connection, q.c.collected_at.name))
    rows = connection.execute(
        select(q.c.source_id, minute, func.count(), func.max(q.c.id))
        .where(q.c.source_id.in_(source_ids), q.c.collected_at >= since, q.c.collected_at < until, q.c.released_at.is_(None))
        .group_by(q.c.source_id, minute)
    )
    return {(source_id, parse_minute(at)): (int(count), int(last)) for source_id, at, count, last in rows}


def holds_by_id(connection: Connection, rates: dict[str, int], ids: list[int]) -> dict[int, Hold]:
    """The holds with these ids, their reasons worded with `rates` (the examples a failing window shows)."""
    if not ids:
        return {}
    return {row["id"]: _hold(row, rates) for row in connection.execute(select(q).where(q.c.id.in_(ids))).mappings()}


def unreleased_counts(connection: Connection) -> dict[str, int]:
    rows = connection.execute(
        select(q.c.source_id, func.count()).where(q.c.released_at.is_(None)).group_by(q.c.source_id)
    )
    return {source_id: int(count) for source_id, count in rows}


def unreleased_in(connection: Connection, pairs: list[tuple[str, datetime, datetime]]) -> dict[str, int]:
    """Unreleased holds per source within each (source, start, end)."""
    counts: dict[str, int] = {}
    for source_id, start, end in pairs:
        count = connection.execute(
            select(func.count()).select_from(q).where(
                q.c.source_id == source_id, q.c.collected_at >= start, q.c.collected_at < end, q.c.released_at.is_(None)
            )
        ).scalar_one()
        counts[source_id] = counts.get(source_id, 0) + int(count)
    return counts


class ReleaseError(ValueError):
    """A release the command refuses; nothing was released."""


def release(connection: Connection, ids: list[int], released_by: str, reason: str, now: datetime) -> list[dict]:
    """Mark holds released (all or none); returns (source, collected_at) of each, to re-derive."""
    rows = connection.execute(select(q).where(q.c.id.in_(ids))).mappings().all()
    found = {row["id"]: row for row in rows}
    missing = sorted(set(ids) - set(found))
    if missing:
        raise ReleaseError(f"no hold with id {', '.join(map(str, missing))}")
    for row in rows:
        if row["released_at"] is not None:
            raise ReleaseError(f"hold {row['id']} was already released by {row['released_by']!r}")
        if max(row["held_uplink_bytes"], row["held_downlink_bytes"]) > MAX_RELEASABLE_BYTES:
            raise ReleaseError(
                f"hold {row['id']} ({max(row['held_uplink_bytes'], row['held_downlink_bytes']):,} B) is above "
                f"{MAX_RELEASABLE_BYTES:,} B: no counter could have moved that much; it cannot be released"
            )
    connection.execute(
        update(q).where(and_(q.c.id.in_(ids), q.c.released_at.is_(None)))
        .values(released_at=now, released_by=released_by, release_reason=reason)
    )
    return [{"source_id": row["source_id"], "collected_at": row["collected_at"]} for row in rows]

