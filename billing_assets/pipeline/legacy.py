"""Legacy pull: one `/v1/snapshots/latest` snapshot per `legacy_pull_job` run (rollout phases 1-2).

`legacy_latest` sources bill from it: the snapshot is staged into
`exporter_snapshot_rows` exactly like a window page, so dedup, buckets and the
ledger treat it like any other delivery (first delivery of an identity wins).
`dual` sources bill from the window API only; their snapshot goes to
`legacy_snapshot_samples`, which nothing bills, for comparison.

A latest snapshot cannot prove that nothing before it was missed, so a pull
never moves the contiguous high-water mark (`last_successful_until`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite

from billing_assets.core.timeutil import now_utc
from billing_assets.registry.model import Source
from billing_assets.storage import checkpoints, snapshots
from billing_assets.storage.schema import exporter_snapshot_rows, legacy_snapshot_samples
from billing_assets.storage.times import time_param
from billing_assets.transport.client import ExporterClient, RetryPolicy
from billing_assets.transport.envelope import LatestSnapshot
from billing_assets.transport.errors import SourceFetchError

PULLED_MODES = ("legacy_latest", "dual")


@dataclass(frozen=True)
class LegacyPullStats:
    source_id: str
    mode: str
    collected_at: datetime
    samples: int
    staged: int
    """Rows staged for billing (`legacy_latest`) or stored for comparison (`dual`)."""
    repeated: bool = False
    """This snapshot time was staged by an earlier pull already (`legacy_latest`)."""


def _epoch_us(value: datetime) -> int:
    return int(value.timestamp()) * 1_000_000 + value.microsecond


def _first_seq(connection, source_id: str, collected_at: datetime, pulled_at: datetime) -> tuple[int, bool]:
    """A delivery_seq above every earlier delivery of the same snapshot time.

    Dedup ranks deliveries of one identity (which includes collected_at) by
    delivery_seq, so only rows with this collected_at compete; the pull time in
    microseconds keeps sequences increasing across pulls, and the MAX guards a
    clock that went backwards.
    """
    table = exporter_snapshot_rows
    latest = connection.execute(
        select(func.max(table.c.delivery_seq)).where(table.c.source_id == source_id, table.c.collected_at == collected_at)
    ).scalar()
    return max(_epoch_us(pulled_at), int(latest or 0) + 1), latest is not None


def snapshot_rows(source_id: str, snapshot: LatestSnapshot, first_seq: int, pulled_at: object, stamp) -> Iterator[tuple]:
    """Staging tuples (`snapshots.STAGED_COLUMNS` order), as `fetch.page_rows` builds them for a page."""
    collected_at = stamp(snapshot.collected_at)
    for offset, sample in enumerate(snapshot.samples):
        yield (
            source_id, snapshot.node_id, snapshot.env, sample.uuid, sample.inbound_tag, collected_at, sample.email,
            sample.uplink_bytes_total, sample.downlink_bytes_total, first_seq + offset, pulled_at,
        )


def _store_for_comparison(connection, source_id: str, snapshot: LatestSnapshot, pulled_at: datetime) -> int:
    rows = [
        {
            "source_id": source_id,
            "node_id": snapshot.node_id,
            "env": snapshot.env,
            "uuid": sample.uuid,
            "inbound_tag": sample.inbound_tag,
            "collected_at": snapshot.collected_at,
            "email": sample.email,
            "uplink_bytes_total": sample.uplink_bytes_total,
            "downlink_bytes_total": sample.downlink_bytes_total,
            "pulled_at": pulled_at,
        }
        for sample in snapshot.samples
    ]
    if not rows:
        return 0
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    connection.execute(dialect.insert(legacy_snapshot_samples).on_conflict_do_nothing(), rows)
    return len(rows)


def pull_latest(
    engine: Engine,
    source: Source,
    clock: Callable[[], datetime] = now_utc,
    retry: RetryPolicy | None = None,
) -> LegacyPullStats:
    """Pull and store one snapshot in one transaction; failures of `legacy_latest` sources go to the checkpoint.

    A `dual` source's checkpoint belongs to its window collection, so a legacy
    pull neither clears nor sets its error: the caller reports it instead.
    """
    if source.mode not in PULLED_MODES:
        raise SourceFetchError(source.source_id, f"mode {source.mode!r} does not pull /v1/snapshots/latest")
    if not source.enabled:
        raise SourceFetchError(source.source_id, "source is disabled in the registry; enable it to pull")
    billed = source.mode == "legacy_latest"
    now = clock()
    repeated = False
    try:
        with ExporterClient(source, retry) as client:
            snapshot = client.latest()
        with engine.begin() as connection:
            if billed:
                stamp = time_param(connection)
                first, repeated = _first_seq(connection, source.source_id, snapshot.collected_at, now)
                staged = snapshots.stage_rows(connection, snapshot_rows(source.source_id, snapshot, first, stamp(now), stamp))
                checkpoints.record_attempt_success(connection, source.source_id, now)
            else:
                staged = _store_for_comparison(connection, source.source_id, snapshot, now)
    except SourceFetchError as error:
        if billed:
            with engine.begin() as connection:
                checkpoints.record_failure(connection, source.source_id, str(error), now)
        raise
    return LegacyPullStats(source.source_id, source.mode, snapshot.collected_at, len(snapshot.samples), staged, repeated)
