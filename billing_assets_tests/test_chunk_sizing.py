"""Chunk sizing of the bucket and ledger steps: dense sources get shorter chunks, so memory stays bounded."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from billing_assets.core.timeutil import MINUTE
from billing_assets.pipeline.bucket import CHUNK, chunk_for
from billing_assets.pipeline.slices import Slice

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def hours(count: float) -> Slice:
    return Slice("eu-1", START, START + timedelta(hours=count))


def test_sparse_source_keeps_hour_chunks():
    assert chunk_for(300_000, hours(1), CHUNK, 600_000) == CHUNK
    assert chunk_for(0, hours(6), CHUNK, 600_000) == CHUNK


def test_dense_source_gets_whole_minute_chunks_within_budget():
    # 10,000 users x 1.5 tags every 15 s: 3.6 M samples an hour, 21.6 M over 6 h.
    chunk = chunk_for(21_600_000, hours(6), CHUNK, 600_000)
    assert chunk == 10 * MINUTE
    parts = list(hours(6).chunks(chunk))
    assert len(parts) == 36 and parts[0].start == START and parts[-1].end == START + timedelta(hours=6)


def test_never_below_one_minute():
    assert chunk_for(10**9, hours(1), CHUNK, 1_000) == MINUTE
