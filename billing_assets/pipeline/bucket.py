"""Bucket step: recompute a slice's minute buckets from samples, write changes.

Chunks of an hour keep memory bounded by chunk size on long ranges; each
chunk is its own transaction, which is safe because bucket writes are
idempotent upserts of values derived only from stored samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine

from billing_assets.core.buckets import compute_minute_buckets
from billing_assets.core.timeutil import now_utc
from billing_assets.pipeline.slices import Slice
from billing_assets.registry.model import Source
from billing_assets.storage import buckets as bucket_store
from billing_assets.storage.sql import source_lock

CHUNK = timedelta(hours=1)


@dataclass
class BucketStats:
    samples: int = 0
    buckets: int = 0
    rows_written: int = 0
    uplink_bytes: int = 0
    downlink_bytes: int = 0


def bucket_slice(
    engine: Engine, source: Source, work: Slice, clock: Callable[[], datetime] = now_utc, chunk: timedelta = CHUNK
) -> BucketStats:
    stats = BucketStats()
    for part in work.chunks(chunk):
        with engine.begin() as connection:
            source_lock(connection, "buckets", source.source_id)
            samples, baselines = bucket_store.load_window(connection, source.source_id, part.start, part.end)
            computed = compute_minute_buckets(samples, baselines, source.billing_start)
            changed = bucket_store.changed_buckets(connection, source.source_id, part.start, part.end, computed)
            stats.rows_written += bucket_store.write_buckets(connection, source.source_id, changed, clock())
        stats.samples += len(samples)
        stats.buckets += len(computed)
        stats.uplink_bytes += int(computed["uplink_bytes"].sum()) if not computed.empty else 0
        stats.downlink_bytes += int(computed["downlink_bytes"].sum()) if not computed.empty else 0
    return stats
