"""Dedup step: what was delivered for a slice (with its overlap) into the stored samples (`usage_samples`).

The deliveries are read from the kept page bodies of the fetch that speaks
for each instant of the range (`core.claims`), parsed with the same model
the fetch validated them with (or taken as this process's fetch validated
them, `parsed_pages`), and from staged rows where no kept page covers the
range (`legacy_latest` pulls, fetches from before migration 0012).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from itertools import islice

from pydantic import ValidationError
from sqlalchemy import Connection, Engine

from billing_assets.core.claims import claim
from billing_assets.core.dedup import Delivered, DeliveredBuilder, PageColumns
from billing_assets.core.timeutil import now_utc
from billing_assets.pipeline import parsed_pages
from billing_assets.pipeline.slices import Slice
from billing_assets.registry.model import Source
from billing_assets.settings import DEFAULT_DEDUP_HORIZON
from billing_assets.storage import snapshots
from billing_assets.storage.samples import DedupStats, lock_samples, store_deliveries
from billing_assets.storage.times import epoch_micros_of
from billing_assets.storage.transactions import in_transaction_retrying_races
from billing_assets.transport.envelope import WindowPage, describe_validation
from billing_assets.transport.errors import SourceFetchError


# Deliveries judged and written at a time (~120 MB of columns): memory stays bounded whatever the
# range (a 6-hour range of 10,000 users is 19 M samples; all at once peaked at 4.6 GiB).
MAX_CHUNK_DELIVERIES = 500_000


def dedup_slice(
    engine: Engine,
    source: Source,
    work: Slice,
    horizon: timedelta = DEFAULT_DEDUP_HORIZON,
    clock: Callable[[], datetime] = now_utc,
    max_chunk: int = MAX_CHUNK_DELIVERIES,
) -> DedupStats:
    """Dedup one slice in one transaction, retried whole if a racing writer got there first.

    The deliveries go through in chunks of whole pages, in delivery order.
    That gives the same answer as all at once: an identity's collection time
    is part of it, each chunk is judged against the samples stored for its
    own times, and those include what earlier chunks of this transaction
    stored, so a later chunk's re-delivery meets the first delivery as stored.
    The retry re-reads what is stored, so it inserts only what is still missing.
    """
    now = clock()
    since = work.start - source.overlap

    def dedup(connection: Connection) -> DedupStats:
        lock_samples(connection, source.source_id)
        total = DedupStats(0, 0, 0, 0)
        for delivered in iter_deliveries(connection, source.source_id, since, work.end, max_chunk):
            done = store_deliveries(connection, source.source_id, since, work.end, now, now - horizon, delivered)
            total = total.plus(done)
        return total

    return in_transaction_retrying_races(engine, dedup)


def read_deliveries(connection: Connection, source_id: str, since: datetime, until: datetime) -> Delivered:
    """Every delivery of [since, until) at once, in delivery order (tests, small ranges)."""
    chunks = list(iter_deliveries(connection, source_id, since, until, max_chunk=None))
    return chunks[0] if chunks else DeliveredBuilder().build()


def iter_deliveries(
    connection: Connection, source_id: str, since: datetime, until: datetime, max_chunk: int | None
) -> Iterator[Delivered]:
    """The deliveries of [since, until) in delivery order, each instant from one fetch, in chunks of
    whole pages of at least `max_chunk` deliveries (None: one chunk)."""
    fetches = {fetch.fetch_id: fetch for fetch in snapshots.kept_fetches(connection, source_id, since, until)}
    claims, unclaimed = claim(since, until, list(fetches.values()))
    builder = DeliveredBuilder()
    for fetch_id, intervals in claims:
        fetch = fetches[fetch_id]
        intervals_us = [(epoch_micros_of(start), epoch_micros_of(end)) for start, end in intervals]
        for page_id, sha256 in snapshots.kept_pages(connection, source_id, fetch):
            page = parsed_pages.take(sha256) or _parse_kept(connection, source_id, fetch, page_id)
            builder.add_page(page, intervals_us)
            if max_chunk is not None and builder.size >= max_chunk:
                yield builder.build()
                builder = DeliveredBuilder()
    if unclaimed:
        rows = snapshots.staged_deliveries(connection, source_id, unclaimed)
        while batch := list(islice(rows, max_chunk or 100_000)):
            builder.add_rows(batch)
            if max_chunk is not None and builder.size >= max_chunk:
                yield builder.build()
                builder = DeliveredBuilder()
    if builder.size or max_chunk is None:
        yield builder.build()


def _parse_kept(connection: Connection, source_id: str, fetch, page_id: int) -> PageColumns:
    """A kept page read back and validated again: a damaged or no longer valid one fails the step
    naming the source and the fetch (nothing is written)."""
    try:
        body = snapshots.kept_body(connection, source_id, fetch, page_id)
    except ValueError as error:
        raise SourceFetchError(source_id, f"kept page of fetch {fetch.fetch_id}: {error}; re-fetch the window") from None
    try:
        page = WindowPage.model_validate_json(body)
    except ValidationError as error:  # validated when fetched: the rules changed since, or the store is damaged
        raise SourceFetchError(source_id, f"kept page body no longer validates: {describe_validation(error)}") from None
    return parsed_pages.columns_of(page)
