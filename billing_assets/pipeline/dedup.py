"""Dedup step: what was delivered for a slice (with its overlap) into the stored samples (`usage_samples`).

The deliveries are read from the kept page bodies of the fetch that speaks
for each instant of the range (`core.claims`), parsed with the same model
the fetch validated them with, and from staged rows where no kept page
covers the range (`legacy_latest` pulls, fetches from before migration 0012).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from pydantic import ValidationError
from sqlalchemy import Connection, Engine

from billing_assets.core.claims import Interval, claim, within
from billing_assets.core.dedup import Delivered, DeliveredBuilder
from billing_assets.core.timeutil import now_utc
from billing_assets.pipeline.slices import Slice
from billing_assets.registry.model import Source
from billing_assets.settings import DEFAULT_DEDUP_HORIZON
from billing_assets.storage import snapshots
from billing_assets.storage.samples import DedupStats, lock_samples, store_deliveries
from billing_assets.storage.times import epoch_micros_of
from billing_assets.storage.transactions import in_transaction_retrying_races
from billing_assets.transport.envelope import WindowPage, describe_validation
from billing_assets.transport.errors import SourceFetchError


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

    def dedup(connection: Connection) -> DedupStats:
        lock_samples(connection, source.source_id)
        delivered = read_deliveries(connection, source.source_id, since, work.end)
        return store_deliveries(connection, source.source_id, since, work.end, now, now - horizon, delivered)

    return in_transaction_retrying_races(engine, dedup)


def read_deliveries(connection: Connection, source_id: str, since: datetime, until: datetime) -> Delivered:
    """Every delivery of [since, until), in delivery order, each instant from one fetch."""
    claims, unclaimed = claim(since, until, snapshots.kept_fetches(connection, source_id, since, until))
    builder = DeliveredBuilder()
    for fetch_id, intervals in claims:
        for body in snapshots.fetch_bodies(connection, source_id, fetch_id):
            _add_page(builder, source_id, body, intervals)
    if unclaimed:
        builder.add_rows(snapshots.staged_deliveries(connection, source_id, unclaimed))
    return builder.build()


def _add_page(builder: DeliveredBuilder, source_id: str, body: bytes, intervals: list[Interval]) -> None:
    try:
        page = WindowPage.model_validate_json(body)
    except ValidationError as error:  # validated when fetched: the rules changed since, or the store is damaged
        raise SourceFetchError(source_id, f"kept page body no longer validates: {describe_validation(error)}") from None
    for item in page.items:
        if within(item.collected_at, intervals):
            builder.add_snapshot(page.node_id, page.env, epoch_micros_of(item.collected_at), item.samples)
