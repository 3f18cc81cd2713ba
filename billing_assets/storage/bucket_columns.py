"""PostgreSQL's bucket step: the window's samples out as packed columns, buckets back in by COPY.

Until round 12 (bench/RESULTS.md) one SQL statement derived the buckets
(`LAG`/`LEAD` over the window, a group per minute, an upsert), 1.2-1.3 s of
server CPU per source-hour: the largest single cost of a sample. Now the
server only reads: each column of the window comes back as one `bytea` of
fixed-width big-endian values (`string_agg` of `int4send`/`int8send`, 0.12 s
for 330 k samples where fetching the same rows as tuples costs the client
0.5 s), the numpy rule (`core.series_minutes`) derives the buckets, and the
binary COPY writes them. The pandas function (`core.buckets`) stays the
reference and the SQLite path; both are held to it, and every end-to-end test
runs on both databases against the independent oracle.

A window's first pass COPYs straight into the table. A later pass (late data,
a replay) COPYs into a temporary table and upserts from it, rewriting only
buckets whose values changed, so a replay writes nothing. So does a first
pass whose key another source already holds (two sources sharing a node_id:
the contract key has no source_id): the unique key refuses the COPY, the
savepoint rolls it back, and the upsert decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from billing_assets.core.buckets import HELD_COLUMNS
from billing_assets.core.plausibility import DEFAULT_MAX_BYTES_PER_SECOND
from billing_assets.core.series_minutes import SeriesMinutes, SeriesSamples, derive_series_minutes
from billing_assets.storage import binary_copy, quarantine
from billing_assets.storage.bulk import copy_columns, staging_table
from billing_assets.storage.schema import usage_minute_buckets
from billing_assets.storage.source_series import in_source_sql
from billing_assets.storage.sql import typed
from billing_assets.storage.times import epoch_micros_of

_SERIES = ("node_id", "env", "uuid", "inbound_tag")
_WRITTEN = (*_SERIES, "bucket_start", "source_id", "email", "uplink_bytes", "downlink_bytes", "sample_count", "updated_at")
_RANGE = {"start": "ts", "end": "ts"}


def _packed(columns: str) -> str:
    """One `bytea` per column: the values' binary send forms, concatenated."""
    return ", ".join(f"string_agg({send}, ''::bytea)" for send in columns.split(", "))


_FIXED = "int4send({t}series_id), timestamptz_send({t}collected_at), int8send({t}uplink_bytes_total), int8send({t}downlink_bytes_total)"

# Several aggregates of one plain (non-parallel) Agg node see the rows in one
# order, so row i of every column is the same sample: `recompute_buckets`
# turns parallel plans off for its transaction.
WINDOW_COLUMNS = typed(
    f"""
    /* billing: bucket window columns */
    SELECT COUNT(*), {_packed(_FIXED.format(t=''))}, string_agg(e, ''::bytea), string_agg(int4send(octet_length(e)), ''::bytea)
    FROM (
        SELECT series_id, collected_at, uplink_bytes_total, downlink_bytes_total, convert_to(email, 'UTF8') AS e
        FROM usage_sample_rows
        WHERE {in_source_sql(True)} AND collected_at >= :start AND collected_at < :end
    ) w
    """,
    _RANGE,
)

# Each series' last sample before the window: an index seek per series on the
# primary key (series_id, collected_at), for the series the window holds.
BASELINE_COLUMNS = typed(
    f"""
    SELECT COUNT(*), {_packed(_FIXED.format(t='p.'))}
    FROM unnest(CAST(:series_ids AS integer[])) AS w(series_id)
    CROSS JOIN LATERAL (
        SELECT * FROM usage_sample_rows s
        WHERE s.series_id = w.series_id AND s.collected_at < :start
        ORDER BY s.collected_at DESC
        LIMIT 1
    ) p
    """,
    {"start": "ts"},
)

# Every series of the source: its ids bound for the window read (storage/source_series.py), its
# contract columns for the buckets written.
SERIES_OF_SOURCE = typed("SELECT series_id, node_id, env, uuid, inbound_tag FROM usage_series WHERE source_id = :source_id")

RELEASED = typed(
    """
    SELECT d.series_id, CAST(EXTRACT(EPOCH FROM q.collected_at) * 1000000 AS BIGINT), q.held_uplink_bytes, q.held_downlink_bytes
    FROM usage_quarantine q
    JOIN usage_series d ON d.source_id = q.source_id AND d.node_id = q.node_id AND d.env = q.env
                       AND d.uuid = q.uuid AND d.inbound_tag = q.inbound_tag
    WHERE q.source_id = :source_id AND q.collected_at >= :start AND q.collected_at < :end AND q.released_at IS NOT NULL
    """,
    _RANGE,
)

ANY_BUCKET_IN_WINDOW = typed(
    "SELECT EXISTS (SELECT 1 FROM usage_minute_buckets WHERE source_id = :source_id AND bucket_start >= :start AND bucket_start < :end)",
    _RANGE,
)

UNRELEASED_IN_WINDOW = typed(
    """
    SELECT EXISTS (
        SELECT 1 FROM usage_quarantine
        WHERE source_id = :source_id AND collected_at >= :start AND collected_at < :end AND released_at IS NULL
    )
    """,
    _RANGE,
)

# Only buckets whose values changed are rewritten (and counted); source_id is
# not compared, as the key it would be compared under has none.
UPSERT_CHANGED = f"""
    INSERT INTO usage_minute_buckets AS b ({", ".join(_WRITTEN)})
    SELECT {", ".join(_WRITTEN)} FROM {{staging}}
    ON CONFLICT ({", ".join(_SERIES)}, bucket_start) DO UPDATE SET
        source_id = excluded.source_id, email = excluded.email, uplink_bytes = excluded.uplink_bytes,
        downlink_bytes = excluded.downlink_bytes, sample_count = excluded.sample_count, updated_at = excluded.updated_at
    WHERE (b.email, b.uplink_bytes, b.downlink_bytes, b.sample_count)
          IS DISTINCT FROM (excluded.email, excluded.uplink_bytes, excluded.downlink_bytes, excluded.sample_count)
"""


@dataclass(frozen=True)
class Recomputed:
    buckets: int
    samples: int
    uplink_bytes: int
    downlink_bytes: int
    rows_written: int
    held: int = 0
    holds_changed: int = 0


@dataclass(frozen=True)
class _Window:
    samples: SeriesSamples
    email_bytes: bytes
    email_offsets: np.ndarray  # where sample i's UTF-8 email starts in email_bytes; one past the end last

    def emails(self, rows: np.ndarray) -> np.ndarray:
        blob, offsets = self.email_bytes, self.email_offsets
        return np.array([blob[offsets[i]:offsets[i + 1]].decode() for i in rows.tolist()], dtype=object)


def recompute_buckets(
    connection: Connection,
    source_id: str,
    start: datetime,
    end: datetime,
    billing_start: datetime,
    now: datetime,
    max_bytes_per_second: int = DEFAULT_MAX_BYTES_PER_SECOND,
) -> Recomputed:
    """Recompute [start, end) of one source's buckets and holds, writing the changed ones (PostgreSQL only)."""
    params = {"source_id": source_id, "start": start, "end": end}
    connection.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")
    keys = _series_keys(connection, source_id)
    window = _read_window(connection, {**params, "series_ids": keys.index.tolist()})
    series_ids = np.unique(window.samples.series_id)
    baselines = _read_baselines(connection, series_ids, start) if len(series_ids) else SeriesSamples.empty()
    released = _released(connection, params)
    usage = derive_series_minutes(window.samples, baselines, epoch_micros_of(billing_start), max_bytes_per_second, released)
    written = _write(connection, params, _bucket_columns(usage, window, keys, source_id, now)) if len(usage) else 0
    changed = 0
    if len(usage.held) or connection.execute(UNRELEASED_IN_WINDOW, params).scalar_one():
        changed = quarantine.replace_holds(connection, source_id, start, end, _held_frame(usage, window, keys), now)
    return Recomputed(
        buckets=len(usage),
        samples=len(window.samples),
        uplink_bytes=sum(usage.uplink_bytes.tolist()),
        downlink_bytes=sum(usage.downlink_bytes.tolist()),
        rows_written=written,
        held=len(usage.held),
        holds_changed=changed,
    )


def _column(packed: bytes | None, dtype: str) -> np.ndarray:
    return np.frombuffer(packed or b"", dtype=dtype).astype(np.int64)


def _samples(row) -> SeriesSamples:
    series_id, at, up, down = row
    at_us = _column(at, ">i8") + binary_copy.PG_EPOCH_MICROS  # timestamptz_send counts from 2000-01-01
    return SeriesSamples(_column(series_id, ">i4"), at_us, _column(up, ">i8"), _column(down, ">i8"))


def _read_window(connection: Connection, params: dict) -> _Window:
    count, *fixed, emails, lengths = connection.execute(WINDOW_COLUMNS, params).one()
    samples = _samples(fixed)
    offsets = np.zeros(int(count) + 1, dtype=np.int64)
    np.cumsum(_column(lengths, ">i4"), out=offsets[1:])
    if not len(samples) == count == len(offsets) - 1 or offsets[-1] != len(emails or b""):
        raise RuntimeError("bucket window columns disagree in length")  # a broken invariant, not bad input
    return _Window(samples, bytes(emails or b""), offsets)


def _read_baselines(connection: Connection, series_ids: np.ndarray, start: datetime) -> SeriesSamples:
    _count, *fixed = connection.execute(BASELINE_COLUMNS, {"series_ids": series_ids.tolist(), "start": start}).one()
    return _samples(fixed)


def _series_keys(connection: Connection, source_id: str) -> pd.DataFrame:
    """The contract columns of each series of the source, indexed by series_id."""
    rows = connection.execute(SERIES_OF_SOURCE, {"source_id": source_id}).all()
    return pd.DataFrame(rows, columns=["series_id", *_SERIES]).set_index("series_id")


def _released(connection: Connection, params: dict) -> frozenset:
    return frozenset(tuple(int(v) for v in row) for row in connection.execute(RELEASED, params))


def _keys_of(keys: pd.DataFrame, series_ids: np.ndarray) -> dict[str, np.ndarray]:
    taken = keys.loc[series_ids]
    return {name: taken[name].to_numpy(dtype=object) for name in _SERIES}


def _bucket_columns(usage: SeriesMinutes, window: _Window, keys: pd.DataFrame, source_id: str, now: datetime) -> dict:
    count = len(usage)
    series = _keys_of(keys, usage.series_id)
    return {
        **{name: binary_copy.text(series[name]) for name in _SERIES},
        "bucket_start": binary_copy.timestamptz(usage.bucket_us),
        "source_id": binary_copy.text(np.full(count, source_id, dtype=object)),
        "email": binary_copy.text(window.emails(usage.last_row)),
        "uplink_bytes": binary_copy.int8(usage.uplink_bytes),
        "downlink_bytes": binary_copy.int8(usage.downlink_bytes),
        "sample_count": binary_copy.int4(usage.sample_count),
        "updated_at": binary_copy.timestamptz(np.full(count, epoch_micros_of(now), dtype=np.int64)),
    }


def _write(connection: Connection, params: dict, columns: dict) -> int:
    if not connection.execute(ANY_BUCKET_IN_WINDOW, params).scalar_one():
        try:
            with connection.begin_nested():
                return copy_columns(connection, usage_minute_buckets.name, columns)
        except IntegrityError:
            pass  # a bucket of another source holds one of these keys: the upsert decides
    staging = staging_table(connection, usage_minute_buckets.name, _WRITTEN)
    copy_columns(connection, staging, columns)
    written = connection.exec_driver_sql(UPSERT_CHANGED.format(staging=staging)).rowcount
    connection.exec_driver_sql(f"DROP TABLE {staging}")
    return int(written)


def _held_frame(usage: SeriesMinutes, window: _Window, keys: pd.DataFrame) -> pd.DataFrame:
    """The holds in `quarantine.replace_holds`' form (HELD_COLUMNS)."""
    held = usage.held
    if not len(held):
        return pd.DataFrame({column: [] for column in HELD_COLUMNS})
    samples = window.samples
    frame = pd.DataFrame(_keys_of(keys, samples.series_id[held.row]))
    frame["collected_at"] = pd.to_datetime(samples.collected_us[held.row], unit="us", utc=True)
    frame["held_uplink_bytes"] = held.uplink
    frame["held_downlink_bytes"] = held.downlink
    frame["elapsed_us"] = pd.array(np.where(held.elapsed_us < 0, None, held.elapsed_us).tolist(), dtype=object)
    frame["bound_bytes"] = held.bound
    return frame[HELD_COLUMNS]
