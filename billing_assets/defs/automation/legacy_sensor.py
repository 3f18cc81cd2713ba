"""The legacy tick: decide and request; the `/v1/snapshots/latest` pulls run as runs.

The sensor body makes no HTTP request and writes nothing. Per enabled
`legacy_latest` or `dual` source without a queued or running run
(`has_unfinished_run`) it requests one `legacy_pull_job` run
(`defs/automation/legacy_pull.py`, tagged `billing/source=<id>`,
`billing/trigger=legacy-pull`), so the run queue's per-source limit serializes
a source's pulls with its billing runs.

`legacy_latest` sources (including the `EXPORTER_BASE_URL` source used when no
registry exists) bill from those pulls. The sensor reads (read-only engine)
which snapshot times were staged into `exporter_snapshot_rows` since its last
look (rows with `fetched_at` above the cursor's high-water mark, minus
snapshot times staged before it: a re-pulled snapshot is already inside a
requested or pending range) and requests one `legacy_billing_job` run, the four
billing assets with range tags, over the minutes not yet requested; dedup,
buckets and the ledger process it through the normal assets (whose fetch step
skips the window API for this mode). So a pull is billed by the tick after it
ran. `dual` sources only store the snapshot for the dual-read comparison;
their billing runs come from the collection sensor.

Cursor (JSON, per source): `pending`, the earliest minute not yet requested,
and `staged_through`, the highest `fetched_at` already looked at. `pending`
moves back to a newly staged snapshot's minute when that minute was already
requested (a late snapshot), so every staged sample's minute is processed by a
run that starts after it was staged; a bucket computed before one of its
samples arrived would otherwise lose that sample's delta for good. Ranges end
at floor(now), never start before `earliest_window`, and are requested only
for registered sources. A source seen for the first time starts its mark at
what is staged already (nothing older is re-billed); a cursor of the earlier
format (`{source: pending}`) keeps its `pending`.

The staging read scans the source's rows of `exporter_snapshot_rows` (there
is no index on `fetched_at`), once per `legacy_latest` source and tick.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import dagster as dg
from sqlalchemy import func, select

from billing_assets.core.timeutil import ceil_minute, floor_minute, format_rfc3339, parse_rfc3339
from billing_assets.defs.automation import clock
from billing_assets.defs.automation.legacy_pull import PULL_TRIGGER, legacy_pull_job, pull_run_config
from billing_assets.defs.automation.sensor_cursor import load_cursor
from billing_assets.defs.partitions import SOURCES_PARTITION, earliest_window
from billing_assets.defs.resources import BillingStore
from billing_assets.defs.runs import BILLING_ASSETS, has_unfinished_run, range_tags, source_tags
from billing_assets.pipeline.legacy import PULLED_MODES
from billing_assets.registry.model import RegistryError
from billing_assets.storage.engine import SchemaNotReady, schema_revision
from billing_assets.storage.schema import exporter_snapshot_rows

BILLING_TRIGGER = "legacy"

# The billing range run of a legacy_latest source: the same four assets, one run per range (range tags).
legacy_billing_job = dg.define_asset_job(
    "legacy_billing_job",
    selection=dg.AssetSelection.assets(*BILLING_ASSETS),
    description="Bills the staged /v1/snapshots/latest pulls of one legacy_latest source over a minute range.",
)


@dataclass(frozen=True)
class Staged:
    """What a legacy_latest source had staged since the cursor's high-water mark."""

    through: datetime | None
    """The new high-water mark: the highest `fetched_at` seen (the old mark if nothing new)."""
    first: datetime | None = None
    """The earliest snapshot time first staged after the old mark (None: no new snapshot)."""
    last: datetime | None = None


def staged_since(connection, source_id: str, after: datetime | None) -> Staged:
    """Snapshot times first staged after `after` (every staged one if None), read only."""
    table = exporter_snapshot_rows
    where = [table.c.source_id == source_id]
    if after is not None:
        where.append(table.c.fetched_at > after)
    rows = connection.execute(
        select(table.c.collected_at, func.max(table.c.fetched_at)).where(*where).group_by(table.c.collected_at)
    ).all()
    if not rows:
        return Staged(after)
    through = max(fetched for _, fetched in rows)
    times = {collected for collected, _ in rows}
    if after is not None:  # re-pulled: that snapshot time was staged (and looked at) before the mark
        times -= set(
            connection.execute(
                select(table.c.collected_at)
                .where(table.c.source_id == source_id, table.c.collected_at.in_(sorted(times)), table.c.fetched_at <= after)
                .distinct()
            ).scalars()
        )
    return Staged(max(through, after) if after else through, min(times, default=None), max(times, default=None))


def staged_mark(connection, source_id: str) -> Staged:
    """A first look at a source: the mark starts at what is staged already."""
    table = exporter_snapshot_rows
    return Staged(connection.execute(select(func.max(table.c.fetched_at)).where(table.c.source_id == source_id)).scalar())


def _read_staging(billing: BillingStore, marks: dict[str, datetime | None], fresh: set[str]) -> dict[str, Staged]:
    """Per source, what is staged past its mark; never migrates or writes (a database not created yet holds nothing)."""
    try:
        engine = billing.read_engine(require_head=False)
        with engine.connect() as connection:
            if schema_revision(connection) is None:
                return {sid: Staged(None if sid in fresh else mark) for sid, mark in marks.items()}
            return {
                sid: staged_mark(connection, sid) if sid in fresh else staged_since(connection, sid, mark)
                for sid, mark in marks.items()
            }
    except SchemaNotReady as error:
        if error.current is None:
            return {sid: Staged(None if sid in fresh else mark) for sid, mark in marks.items()}
        raise


def _state(raw) -> tuple[datetime | None, datetime | None, bool]:
    """(pending, staged_through, has a mark) of one cursor entry; the earlier format held `pending` only."""
    if isinstance(raw, str):
        return parse_rfc3339(raw), None, False
    if isinstance(raw, dict) and "staged_through" in raw:
        pending, through = raw.get("pending"), raw.get("staged_through")
        return (parse_rfc3339(pending) if pending else None), (parse_rfc3339(through) if through else None), True
    return None, None, False


def _entry(pending: datetime | None, through: datetime | None) -> dict:
    return {
        "pending": format_rfc3339(pending) if pending else None,
        "staged_through": format_rfc3339(through) if through else None,
    }


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    jobs=[legacy_pull_job, legacy_billing_job],
)
def legacy_latest_sensor(context: dg.SensorEvaluationContext, billing: BillingStore):
    """Requests a pull run per enabled legacy/dual source, and billing range runs for what legacy ones staged."""
    try:
        registry = billing.registry()
    except RegistryError as error:
        return dg.SkipReason(f"registry not loaded: {error}")
    sources = [source for source in registry.enabled if source.mode in PULLED_MODES]
    if not sources:
        return dg.SkipReason("no enabled legacy_latest or dual source")
    now = clock.now()
    registered = set(context.instance.get_dynamic_partitions(SOURCES_PARTITION))
    cursor = load_cursor(context.cursor)
    earliest = ceil_minute(earliest_window(now))
    billed = [source.source_id for source in sources if source.mode == "legacy_latest"]
    states = {sid: _state(cursor.get(sid)) for sid in billed}
    staged = _read_staging(
        billing, {sid: through for sid, (_, through, _) in states.items()}, {sid for sid, (*_, marked) in states.items() if not marked}
    )
    requests, notes = [], []
    for source in sources:
        sid = source.source_id
        bill = None
        if sid in staged:
            pending, _, _ = states[sid]
            seen = staged[sid]
            if seen.first is not None:
                minute = floor_minute(seen.first)
                notes.append(f"{sid}: staged snapshots {format_rfc3339(seen.first)}..{format_rfc3339(seen.last)}")
                pending = minute if pending is None else min(pending, minute)
            if pending is not None:
                pending = max(pending, earliest)
                end = floor_minute(now)
                if end > pending and sid not in registered:
                    notes.append(f"{sid}: not registered yet")
                elif end > pending:
                    bill = (pending, end)
            cursor[sid] = _entry(pending, seen.through)
        if has_unfinished_run(context.instance, sid):
            notes.append(f"{sid}: previous run still queued or running")
            continue
        if bill is not None:
            start, end = bill
            requests.append(
                dg.RunRequest(
                    # The staging mark makes a re-opened range (late snapshot) a new run key, which
                    # the daemon would otherwise skip as already launched.
                    run_key=f"{BILLING_TRIGGER}:{sid}:{format_rfc3339(start)}:{format_rfc3339(end)}:{cursor[sid]['staged_through']}",
                    job_name=legacy_billing_job.name,
                    tags={**range_tags(sid, start, end), **source_tags(sid, BILLING_TRIGGER)},
                )
            )
            cursor[sid] = _entry(end, staged[sid].through)
            context.log.info(f"{sid}: requesting [{format_rfc3339(start)}, {format_rfc3339(end)})")
        requests.append(
            dg.RunRequest(
                run_key=f"{PULL_TRIGGER}:{sid}:{format_rfc3339(now)}",
                job_name=legacy_pull_job.name,
                run_config=pull_run_config(sid),
                tags=source_tags(sid, PULL_TRIGGER),
            )
        )
    cursor_json = json.dumps(cursor, sort_keys=True)
    if not requests:
        return dg.SensorResult(skip_reason=dg.SkipReason("; ".join(notes) or "nothing due"), cursor=cursor_json)
    return dg.SensorResult(run_requests=requests, cursor=cursor_json)
