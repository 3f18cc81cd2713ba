"""Bucket step: recompute a slice's minute buckets from samples, write changes.

On PostgreSQL the window's samples come out as packed columns and the numpy
rule per series id derives them (storage/bucket_columns.py); on SQLite the
pure pandas function does, on the rows read.

Chunks keep memory bounded on long ranges: at most an hour, and fewer
minutes when the source is dense enough that an hour would hold more than
the dialect's budget of samples (10,000 users at 15 s are 3.6 M samples an
hour, several GiB as a DataFrame). Each chunk is its own transaction, which
is safe because bucket writes are idempotent upserts of values derived only from
stored samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine

from billing_assets.core.buckets import derive_minute_usage
from billing_assets.core.timeutil import MINUTE, now_utc
from billing_assets.pipeline.progress import Progress
from billing_assets.pipeline.slices import Slice
from billing_assets.registry.model import Source
from billing_assets.storage import buckets as bucket_store
from billing_assets.storage import quarantine
from billing_assets.storage.bucket_columns import Recomputed, recompute_buckets
from billing_assets.storage.dialect import is_postgres
from billing_assets.storage.transactions import source_lock

CHUNK = timedelta(hours=1)
MAX_CHUNK_SAMPLES = 200_000  # the pandas path (SQLite), sized by the memory preset (bench/RESULTS.md, round 3)
# PostgreSQL's column path pays a primary-key descent per series of the source once per chunk: at
# 200 k a 10,000-user source read its 15,000 series 108 times over 6 hours (bucket 118 s of the
# memory preset). It holds ~300 B a sample at its peak (the packed result, its decoded columns,
# the sort): 1 M took the preset's peak RSS from 474 to 639 MiB for a 57.5 s bucket step (round 12).
MAX_CHUNK_SAMPLES_COLUMNS = 500_000


def chunk_for(rows: int, work: Slice, longest: timedelta, budget: int) -> timedelta:
    """Whole minutes such that a chunk of `work` holds about `budget` of its `rows` (at most `longest`)."""
    if rows <= budget or work.minutes <= 1:
        return longest
    minutes = max(1, work.minutes * budget // rows)
    return min(longest, MINUTE * minutes)


@dataclass
class BucketStats:
    samples: int = 0
    buckets: int = 0
    rows_written: int = 0
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    held: int = 0  # sample deltas above the plausibility bound, in usage_quarantine


def bucket_slice(
    engine: Engine,
    source: Source,
    work: Slice,
    clock: Callable[[], datetime] = now_utc,
    chunk: timedelta = CHUNK,
    max_samples: int | None = None,
    progress: Progress | None = None,
) -> BucketStats:
    stats = BucketStats()
    if work.end - work.start > MINUTE:
        with engine.connect() as connection:
            stored = bucket_store.count_samples(connection, source.source_id, work.start, work.end)
            budget = max_samples or (MAX_CHUNK_SAMPLES_COLUMNS if is_postgres(connection) else MAX_CHUNK_SAMPLES)
        chunk = chunk_for(stored, work, chunk, budget)
    for part in work.chunks(chunk):
        with engine.begin() as connection:
            source_lock(connection, "buckets", source.source_id)
            if is_postgres(connection):
                done = recompute_buckets(
                    connection, source.source_id, part.start, part.end, source.billing_start, clock(),
                    source.max_bytes_per_second,
                )
            else:
                done = _recompute_in_pandas(connection, source, part, clock())
        stats.samples += done.samples
        stats.buckets += done.buckets
        stats.rows_written += done.rows_written
        stats.uplink_bytes += done.uplink_bytes
        stats.downlink_bytes += done.downlink_bytes
        stats.held += done.held
        if progress:
            progress.advance(part.end, done.samples)
    return stats


def _recompute_in_pandas(connection: Connection, source: Source, part: Slice, now: datetime) -> Recomputed:
    """SQLite (the embedded default): the pure `compute_minute_buckets` on the window's rows."""
    samples, baselines = bucket_store.load_window(connection, source.source_id, part.start, part.end)
    released = quarantine.load_released(connection, source.source_id, part.start, part.end)
    usage = derive_minute_usage(samples, baselines, source.billing_start, source.max_bytes_per_second, released)
    holds_changed = quarantine.replace_holds(connection, source.source_id, part.start, part.end, usage.held, now)
    computed = usage.buckets
    changed = bucket_store.changed_buckets(connection, source.source_id, part.start, part.end, computed)
    written = bucket_store.write_buckets(connection, source.source_id, changed, now)
    return Recomputed(
        buckets=len(computed),
        samples=len(samples),
        uplink_bytes=int(computed["uplink_bytes"].sum()) if not computed.empty else 0,
        downlink_bytes=int(computed["downlink_bytes"].sum()) if not computed.empty else 0,
        rows_written=written,
        held=len(usage.held),
        holds_changed=holds_changed,
    )
