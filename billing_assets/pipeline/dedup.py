"""Dedup step: staged deliveries of a slice (with its overlap) into usage_samples."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from billing_assets.core.timeutil import now_utc
from billing_assets.pipeline.slices import Slice
from billing_assets.registry.model import Source
from billing_assets.storage.samples import DedupStats, dedup_staged

DEFAULT_DEDUP_HORIZON = timedelta(days=32)
ATTEMPTS = 3


def dedup_slice(
    engine: Engine,
    source: Source,
    work: Slice,
    horizon: timedelta = DEFAULT_DEDUP_HORIZON,
    clock: Callable[[], datetime] = now_utc,
) -> DedupStats:
    """Dedup one slice in one transaction, retried whole if a racing writer got there first.

    The retry re-reads what is stored, so it inserts only what is still missing.
    """
    now = clock()
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with engine.begin() as connection:
                return dedup_staged(connection, source.source_id, work.start - source.overlap, work.end, now, now - horizon)
        except IntegrityError:
            if attempt == ATTEMPTS:
                raise
    raise AssertionError("unreachable")
