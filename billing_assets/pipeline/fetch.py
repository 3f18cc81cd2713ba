"""Fetch step: every page of a slice (plus overlap) staged in one transaction.

Pages stream: each is validated, written with COPY/executemany and dropped
before the next is requested, so memory is bounded by page size, not range.

The overlap before the slice re-reads the tail of the previous window, which
is how late deliveries there get picked up; dedup makes the re-read free.
One transaction per slice means a failure on page 7 leaves nothing staged and
the checkpoint untouched; the failure itself is recorded separately.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from billing_assets.core.timeutil import now_utc
from billing_assets.pipeline.slices import Slice
from billing_assets.registry.model import Source
from billing_assets.storage import checkpoints, snapshots
from billing_assets.storage.sql import time_param
from billing_assets.transport.client import ExporterClient, RetryPolicy
from billing_assets.transport.envelope import WindowPage
from billing_assets.transport.errors import SourceFetchError


@dataclass
class FetchStats:
    pages: int = 0
    items: int = 0
    samples: int = 0
    body_bytes: int = 0
    fetch_since: datetime | None = None
    note: str | None = None


def page_rows(
    source_id: str, page: WindowPage, first_seq: int, fetched_at: object, stamp: Callable[[datetime], object]
) -> Iterator[tuple]:
    """Staging tuples (`snapshots.STAGED_COLUMNS` order) of one validated page.

    `stamp` turns a datetime into the driver's form once per snapshot, not per sample.
    """
    seq = first_seq
    node_id, env = page.node_id, page.env
    for item in page.items:
        collected_at = stamp(item.collected_at)
        for sample in item.samples:
            yield (
                source_id,
                node_id,
                env,
                sample["uuid"],
                sample["inbound_tag"],
                collected_at,
                sample["email"],
                sample["uplink_bytes_total"],
                sample["downlink_bytes_total"],
                seq,
                fetched_at,
            )
            seq += 1


def fetch_slice(
    engine: Engine,
    source: Source,
    work: Slice,
    run_id: str | None = None,
    retry: RetryPolicy | None = None,
    clock: Callable[[], datetime] = now_utc,
) -> FetchStats:
    if not source.enabled:
        raise SourceFetchError(source.source_id, "source is disabled in the registry; enable it to fetch")
    since, until = work.start - source.overlap, work.end
    stats = FetchStats(fetch_since=since)
    if source.mode == "legacy_latest":
        # No window API: the legacy sensor's /latest pulls are already staged (pipeline/legacy.py).
        stats.note = "legacy_latest: window API not called; dedup reads staged /latest pulls"
        return stats
    now = clock()
    try:
        with ExporterClient(source, retry) as client, engine.begin() as connection:
            snapshots.clear_staged(connection, source.source_id, since, until)
            stamp = time_param(connection)
            fetched_at = stamp(now)
            last_cursor = None
            for fetched in client.iter_window(since, until):
                page = fetched.page
                rows = page_rows(source.source_id, page, stats.samples, fetched_at, stamp)
                written = snapshots.stage_rows(connection, rows)
                snapshots.record_page(
                    connection,
                    source_id=source.source_id,
                    fetch_since=since,
                    fetch_until=until,
                    page_no=fetched.page_no,
                    item_count=len(page.items),
                    sample_count=written,
                    body_bytes=fetched.body_bytes,
                    emitted_at=page.emitted_at,
                    received_at=clock(),
                    run_id=run_id,
                )
                stats.pages += 1
                stats.items += len(page.items)
                stats.samples += written
                stats.body_bytes += fetched.body_bytes
                last_cursor = fetched.cursor
                del fetched, page, rows  # one page in memory at a time, not two
            checkpoints.record_success(connection, source.source_id, since, until, last_cursor, clock())
    except SourceFetchError as error:
        with engine.begin() as connection:
            checkpoints.record_failure(connection, source.source_id, str(error), now)
        raise
    return stats
