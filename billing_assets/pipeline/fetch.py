"""Fetch step: every page of a slice (plus overlap) kept as received, in one transaction.

Pages stream: each is validated, spooled and dropped before the next is
requested, so memory is bounded by page size, not range.

The overlap before the slice re-reads the tail of the previous window, which
is how late deliveries there get picked up; dedup makes the re-read free.
One transaction per slice means a failure on page 7 leaves nothing kept and
the checkpoint untouched; the failure itself is recorded separately. Pages are
spooled to a local file while downloading, so that transaction never waits
on the network.
"""

from __future__ import annotations

import tempfile
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine

from billing_assets.core.dedup import PageColumns
from billing_assets.core.timeutil import floor_minute, now_utc
from billing_assets.pipeline import parsed_pages
from billing_assets.pipeline.progress import Progress
from billing_assets.pipeline.slices import Slice
from billing_assets.registry.model import Source
from billing_assets.storage import checkpoints, page_bodies, snapshots
from billing_assets.transport.client import ExporterClient, RetryPolicy
from billing_assets.transport.errors import SourceFetchError


@dataclass
class FetchStats:
    pages: int = 0
    items: int = 0
    samples: int = 0
    body_bytes: int = 0
    fetch_since: datetime | None = None
    note: str | None = None
    # Samples received per collection minute (overlap minutes included): each
    # minute partition's own figure, counted per snapshot, not per sample.
    samples_by_minute: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class _SpooledPage:
    """What `record_page` needs of a page; its body waits in the spool file."""

    page_no: int
    item_count: int
    sample_count: int
    body_bytes: int
    emitted_at: datetime
    received_at: datetime
    cursor: str | None  # the cursor sent for this page (None for the first)
    body_sha256: str
    body_encoding: str
    columns: PageColumns | None  # the validated page for this run's dedup (`parsed_pages`), held once kept


def _download(
    client: ExporterClient, since: datetime, until: datetime, spool, clock, by_minute: Counter, progress: Progress | None
) -> list[_SpooledPage]:
    """Every page of the window into `spool` as kept (compressed, length-prefixed); no database.

    Bodies, not parsed rows: what is stored is then exactly what was received
    and checked, and a dedup in another process parses it again with the same
    rules. Each page's columns (~24 bytes a sample) stay for this process's dedup.
    """
    pages: list[_SpooledPage] = []
    held = 0
    for fetched in client.iter_window(since, until):
        page = fetched.page
        kept = page_bodies.keep(fetched.body)
        spool.write(len(kept.data).to_bytes(8, "little"))
        spool.write(kept.data)
        samples = 0
        for item in page.items:
            samples += len(item.samples)
            by_minute[floor_minute(item.collected_at)] += len(item.samples)
        if progress and page.items:
            progress.advance(floor_minute(page.items[-1].collected_at), samples)
        columns = None
        if parsed_pages.room(samples, held):
            columns = parsed_pages.columns_of(page)
            held += samples
        pages.append(
            _SpooledPage(
                fetched.page_no, len(page.items), samples, fetched.body_bytes, page.emitted_at, clock(), fetched.cursor,
                kept.sha256, kept.encoding, columns,
            )
        )
        del fetched, page, kept  # one page in memory at a time, not two
    return pages


def fetch_slice(
    engine: Engine,
    source: Source,
    work: Slice,
    run_id: str | None = None,
    retry: RetryPolicy | None = None,
    clock: Callable[[], datetime] = now_utc,
    progress: Progress | None = None,
) -> FetchStats:
    """Download the slice's pages, then keep them and move the checkpoint in one transaction.

    The download writes only to a local spool file: holding a database write
    transaction while an exporter drips bytes would, on SQLite, lock every
    other source out for as long as the slowest exporter takes. The spool keeps
    memory at one page; the transaction afterwards takes as long as the
    database needs, never as long as the network.
    """
    if not source.enabled:
        raise SourceFetchError(source.source_id, "source is disabled in the registry; enable it to fetch")
    since, until = work.start - source.overlap, work.end
    stats = FetchStats(fetch_since=since)
    if source.mode == "legacy_latest":
        # No window API: the legacy sensor's /latest pulls are already staged (pipeline/legacy.py).
        stats.note = "legacy_latest: window API not called; dedup reads staged /latest pulls"
        return stats
    now = clock()
    fetch_id = uuid.uuid4().hex
    try:
        with ExporterClient(source, retry) as client, tempfile.TemporaryFile(prefix="billing-fetch-") as spool:
            pages = _download(client, since, until, spool, clock, stats.samples_by_minute, progress)
            spool.seek(0)
            with engine.begin() as connection:
                for spooled in pages:
                    body = spool.read(int.from_bytes(spool.read(8), "little"))
                    snapshots.record_page(
                        connection,
                        source_id=source.source_id,
                        fetch_since=since,
                        fetch_until=until,
                        page_no=spooled.page_no,
                        item_count=spooled.item_count,
                        sample_count=spooled.sample_count,
                        body_bytes=spooled.body_bytes,
                        emitted_at=spooled.emitted_at,
                        received_at=spooled.received_at,
                        run_id=run_id,
                        fetch_id=fetch_id,
                        request_cursor=spooled.cursor,
                        body_sha256=spooled.body_sha256,
                        body_encoding=spooled.body_encoding,
                        body=body,
                    )
                    stats.pages += 1
                    stats.items += spooled.item_count
                    stats.samples += spooled.sample_count
                    stats.body_bytes += spooled.body_bytes
                last_cursor = pages[-1].cursor if pages else None
                checkpoints.record_success(connection, source.source_id, since, until, last_cursor, clock())
        # kept (committed): this process's dedup may use what it validated
        parsed_pages.hold([(spooled.body_sha256, spooled.columns) for spooled in pages if spooled.columns is not None])
    except SourceFetchError as error:
        with engine.begin() as connection:
            checkpoints.record_failure(connection, source.source_id, str(error), now)
        raise
    return stats
