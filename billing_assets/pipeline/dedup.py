"""Dedup step: staged deliveries of a slice (with its overlap) into the stored samples (`usage_samples`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine

from billing_assets.core.timeutil import now_utc
from billing_assets.pipeline.slices import Slice
from billing_assets.registry.model import Source
from billing_assets.settings import DEFAULT_DEDUP_HORIZON
from billing_assets.storage.samples import DedupStats, dedup_staged
from billing_assets.storage.transactions import in_transaction_retrying_races



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
    since = work.start - source.overlap
    return in_transaction_retrying_races(
        engine, lambda connection: dedup_staged(connection, source.source_id, since, work.end, now, now - horizon)
    )
