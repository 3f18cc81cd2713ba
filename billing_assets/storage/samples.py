"""Dedup's writes: new stored samples, new series, and quarantined conflicts.

A sample's identity (DESIGN.md) is `(source_id, node_id, env, uuid,
inbound_tag, collected_at)`; it is stored as `(series_id, collected_at)` in
`usage_sample_rows`, the series id coming from the `usage_series` dictionary
(issue 14). Other services read the contract columns through the
`usage_samples` view; nothing here writes through it.

Which deliveries are new and which conflict is decided in Python
(`core.dedup.judge`) from one fetch's deliveries and the samples stored for
their range, read after taking the source's lock: writers of one source are
serialised (`source_lock`; SQLite writers are serial anyway), so what was
read is what is stored when the new rows land. The new rows then go in by
COPY, with no anti-join or window sort in the database. The unique
constraints (the dictionary's five columns, the samples' primary key) still
refuse a duplicate if two writers ever race: the transaction then fails
whole and the caller retries, so neither a series nor a sample is ever stored
twice. The first delivery of an identity wins; a later delivery with other
totals is recorded in `sample_conflicts` (with the contract columns and both
values) and never billed.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import Connection

from billing_assets.core.dedup import Delivered, Samples, judge
from billing_assets.storage import binary_copy
from billing_assets.storage.bulk import bulk_insert, bulk_insert_new, copy_columns
from billing_assets.storage.source_series import in_source, with_series
from billing_assets.storage.sql import typed
from billing_assets.storage.times import epoch_micros_of, from_micros, micros_column, micros_params, time_param, time_select
from billing_assets.storage.transactions import source_lock

CONFLICT_REASON = "conflicting duplicate: same sample identity delivered with different totals; first delivery kept"

SERIES_COLUMNS = ("source_id", "node_id", "env", "uuid", "inbound_tag")
CONFLICT_COLUMNS = (
    "source_id", "node_id", "env", "uuid", "inbound_tag", "collected_at", "window_start",
    "kept_uplink_bytes_total", "kept_downlink_bytes_total",
    "rejected_uplink_bytes_total", "rejected_downlink_bytes_total", "reason", "detected_at",
)  # fmt: skip

_SERIES_OF_SOURCE = typed("SELECT node_id, env, uuid, inbound_tag, series_id FROM usage_series WHERE source_id = :source_id")


@dataclass(frozen=True)
class DedupStats:
    staged: int
    inserted: int
    conflicts: int
    beyond_horizon: int

    @property
    def duplicates(self) -> int:
        return self.staged - self.inserted - self.beyond_horizon

    def plus(self, other: "DedupStats") -> "DedupStats":
        return DedupStats(*(mine + theirs for mine, theirs in zip(astuple(self), astuple(other))))


def lock_samples(connection: Connection, source_id: str) -> None:
    source_lock(connection, "samples", source_id)


def store_deliveries(
    connection: Connection, source_id: str, since: datetime, until: datetime, now: datetime, horizon: datetime, delivered: Delivered
) -> DedupStats:
    """Store the first deliveries of [since, until) not stored yet; quarantine conflicts.

    The caller holds `lock_samples` for the source, taken before it read what it delivers here.
    """
    horizon_us = epoch_micros_of(horizon)
    series, source_series = _series_ids(connection, source_id, delivered, horizon_us)
    deliveries = Samples(series, delivered.at, delivered.uplink, delivered.downlink)
    verdict = judge(deliveries, _stored_for(connection, source_id, source_series, since, until, delivered), horizon_us)
    inserted = _insert_samples(connection, source_id, delivered, series, verdict.new, now)
    conflicts = _quarantine(connection, source_id, since, now, delivered, verdict)
    return DedupStats(len(delivered), inserted, conflicts, verdict.beyond_horizon)


def _series_ids(connection: Connection, source_id: str, delivered: Delivered, horizon_us: int) -> tuple[np.ndarray, list[int]]:
    """Each delivery's series id, and every series id of the source; series first delivered inside the horizon are added.

    A series delivered only before the horizon gets a negative stand-in (never
    stored, never equal to a stored sample's id): its deliveries can be neither
    stored nor in conflict with a stored sample.
    """
    known = {tuple(row[:4]): row[4] for row in connection.execute(_SERIES_OF_SOURCE, {"source_id": source_id})}
    inside = np.zeros(len(delivered.series_keys), dtype=bool)
    inside[delivered.key_index[delivered.at >= horizon_us]] = True
    missing = [key for key, wanted in zip(delivered.series_keys, inside.tolist()) if wanted and key not in known]
    if missing:
        bulk_insert(connection, "usage_series", SERIES_COLUMNS, ((source_id, *key) for key in missing))
        known = {tuple(row[:4]): row[4] for row in connection.execute(_SERIES_OF_SOURCE, {"source_id": source_id})}
    ids = np.array([known.get(key, -1 - position) for position, key in enumerate(delivered.series_keys)], dtype=np.int64)
    return (ids[delivered.key_index] if len(ids) else np.empty(0, dtype=np.int64)), list(known.values())


def _stored_for(
    connection: Connection, source_id: str, source_series: list[int], since: datetime, until: datetime, delivered: Delivered
) -> Samples:
    """The stored samples of the times these deliveries were collected at (a chunk of the range: its own span)."""
    if not len(delivered):
        return Samples.empty()
    low = max(since, from_micros(int(delivered.at.min())))
    high = min(until, from_micros(int(delivered.at.max()) + 1))
    return _stored(connection, source_id, source_series, low, high)


def _stored(connection: Connection, source_id: str, source_series: list[int], since: datetime, until: datetime) -> Samples:
    """The samples stored for the source's [since, until): a primary-key range per series of the source."""
    statement = typed(
        f"""
        SELECT series_id, {time_select(connection, 'collected_at')}, uplink_bytes_total, downlink_bytes_total
        FROM usage_sample_rows WHERE {in_source(connection)} AND collected_at >= :since AND collected_at < :until
        """,
        {"since": "ts", "until": "ts"},
    )
    params = {"source_id": source_id, "since": since, "until": until}
    result = connection.execute(statement, with_series(connection, params, ids=source_series))
    rows = result.cursor.fetchall() if result.cursor is not None else []
    result.close()
    if not rows:
        return Samples.empty()
    series, at, uplink, downlink = zip(*rows)
    return Samples.of(series, micros_column(connection, list(at)), uplink, downlink)


def _insert_samples(connection: Connection, source_id: str, delivered: Delivered, series: np.ndarray, new: np.ndarray, now: datetime) -> int:
    """The new samples in one binary COPY of whole columns (executemany on SQLite)."""
    if not len(new):
        return 0
    emails = delivered.email
    return copy_columns(connection, "usage_sample_rows", {
        "series_id": binary_copy.int4(series[new]),
        "collected_at": binary_copy.timestamptz(delivered.at[new]),
        "email": binary_copy.text([emails[position] for position in new.tolist()]),
        "uplink_bytes_total": binary_copy.int8(delivered.uplink[new]),
        "downlink_bytes_total": binary_copy.int8(delivered.downlink[new]),
        "ingested_at": binary_copy.timestamptz(np.full(len(new), epoch_micros_of(now), dtype=np.int64)),
    })  # fmt: skip


def _quarantine(connection: Connection, source_id: str, since: datetime, now: datetime, delivered: Delivered, verdict) -> int:
    """Record each conflicting delivery once (a replay finds it recorded and adds nothing)."""
    if not len(verdict.conflicts):
        return 0
    stamp = time_param(connection)
    window_start, detected_at = stamp(since), stamp(now)
    keys = delivered.series_keys
    positions = verdict.conflicts
    rows = [
        (source_id, *keys[key], at, window_start, kept_up, kept_down, up, down, CONFLICT_REASON, detected_at)
        for key, at, kept_up, kept_down, up, down in zip(
            delivered.key_index[positions].tolist(),
            micros_params(connection, delivered.at[positions]),
            verdict.kept_uplink.tolist(),
            verdict.kept_downlink.tolist(),
            delivered.uplink[positions].tolist(),
            delivered.downlink[positions].tolist(),
        )
    ]
    return bulk_insert_new(connection, "sample_conflicts", CONFLICT_COLUMNS, rows)


def quarantined(connection: Connection, source_id: str, since: datetime, until: datetime, limit: int = 3) -> tuple[int, list[dict]]:
    """How many conflicting deliveries of [since, until) (by collected_at) are quarantined, and the first few."""
    from sqlalchemy import func, select

    from billing_assets.storage.schema import sample_conflicts as table

    where = (table.c.source_id == source_id, table.c.collected_at >= since, table.c.collected_at < until)
    count = connection.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
    examples = connection.execute(select(table).where(*where).order_by(table.c.collected_at, table.c.id).limit(limit))
    return int(count), [dict(row) for row in examples.mappings()]


def conflicts_per_minute(
    connection: Connection, source_ids: list[str], since: datetime, until: datetime
) -> dict[tuple[str, datetime], tuple[int, int]]:
    """Quarantined conflicts of [since, until) per (source, minute of collected_at): (count, id of the first).

    One grouped query for a whole range, so a partitioned check's per-window
    verdicts cost one round trip whatever the range length. A conflict
    belongs to the minute it was collected in, as `quarantined` counts it.
    The id is the minute's first recorded conflict, its example (`conflicts_by_id`).
    """
    from sqlalchemy import func, literal_column, select

    from billing_assets.storage.schema import sample_conflicts as table
    from billing_assets.storage.times import minute_select, parse_minute

    if not source_ids:
        return {}
    minute = literal_column(minute_select(connection, table.c.collected_at.name))
    rows = connection.execute(
        select(table.c.source_id, minute, func.count(), func.min(table.c.id))
        .where(table.c.source_id.in_(source_ids), table.c.collected_at >= since, table.c.collected_at < until)
        .group_by(table.c.source_id, minute)
    )
    return {(source_id, parse_minute(at)): (int(count), int(first)) for source_id, at, count, first in rows}


def conflicts_by_id(connection: Connection, ids: list[int]) -> dict[int, dict]:
    """The quarantined conflicts with these ids (the examples a failing window shows)."""
    from sqlalchemy import select

    from billing_assets.storage.schema import sample_conflicts as table

    if not ids:
        return {}
    return {row["id"]: dict(row) for row in connection.execute(select(table).where(table.c.id.in_(ids))).mappings()}
