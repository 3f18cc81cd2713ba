"""The collection sensor: one range run per source covering everything due.

Each tick costs O(sources): one checkpoint read for all sources, one partition
list, one run lookup per source; partitions are never enumerated. A source
with a queued or running run is skipped (the run queue's per-source limit is
the second guard), a failing source is retried with exponential backoff, and
the run key names the exact range so the daemon never launches one twice.
"""

from __future__ import annotations

import json

import dagster as dg

from billing_assets.defs.runs import BILLING_ASSETS, has_unfinished_run, range_request
from billing_assets.core.timeutil import format_rfc3339, parse_rfc3339
from billing_assets.defs.automation import clock
from billing_assets.defs.automation.due_windows import due_range, retry_after
from billing_assets.defs.automation.sensor_cursor import load_cursor
from billing_assets.settings import Settings
from billing_assets.defs.partitions import SOURCES_PARTITION, earliest_window
from billing_assets.defs.resources import BillingStore
from billing_assets.registry.model import RegistryError
from billing_assets.storage import checkpoints
from billing_assets.storage.engine import SchemaNotReady, schema_revision

COLLECTED_MODES = ("window", "dual")


def _checkpoints(billing: BillingStore) -> dict[str, dict]:
    """Every source's checkpoint, read without migrating (the sensor only reads).

    A database not created yet has no checkpoints: collection starts from
    `billing_start` and the first run migrates. A schema behind this code still
    has the checkpoint table (unchanged since 0001), so collection goes on and
    its next run migrates, rather than waiting for an operator.
    """
    try:
        engine = billing.read_engine(require_head=False)
        with engine.connect() as connection:
            if schema_revision(connection) is None:
                return {}
            return checkpoints.read_all(connection)
    except SchemaNotReady as error:
        if error.current is None:
            return {}
        raise


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    target=dg.AssetSelection.assets(*BILLING_ASSETS),
)
def collection_sensor(context: dg.SensorEvaluationContext, billing: BillingStore):
    """Requests the closed, not yet collected minute windows of every enabled source.

    Disabled sources are not requested (their data stays); sources whose
    partition is not registered yet wait for `exporter_sources_sensor`.
    """
    try:
        registry = billing.registry()
    except RegistryError as error:
        return dg.SkipReason(f"registry not loaded: {error}")
    settings = Settings.from_env()
    now = clock.now()
    registered = set(context.instance.get_dynamic_partitions(SOURCES_PARTITION))
    marks = _checkpoints(billing)
    requested = load_cursor(context.cursor)
    requests, notes = [], []
    for source in registry.enabled:
        sid = source.source_id
        if source.mode not in COLLECTED_MODES or sid not in registered:
            notes.append(f"{sid}: {'not registered yet' if sid not in registered else 'legacy mode'}")
            continue
        mark = marks.get(sid) or {}
        last = parse_rfc3339(requested[sid]) if sid in requested else None
        wait_until = retry_after(last, int(mark.get("consecutive_failures") or 0), source.collect_interval, settings.collect_max_backoff)
        if wait_until is not None and now < wait_until:
            notes.append(f"{sid}: backing off until {format_rfc3339(wait_until)}")
            continue
        due = due_range(
            high_water=mark.get("last_successful_until"),
            billing_start=source.billing_start,
            partitions_start=earliest_window(now),
            now=now,
            lag=settings.collect_lag,
            overlap=settings.collect_overlap,
            max_range=settings.collect_max_range,
            min_new=source.collect_interval,
        )
        if due is None:
            continue
        if has_unfinished_run(context.instance, sid):
            notes.append(f"{sid}: previous run still queued or running")
            continue
        requests.append(range_request(sid, due.start, due.end, "collect"))
        requested[sid] = format_rfc3339(now)
        context.log.info(f"{sid}: requesting [{format_rfc3339(due.start)}, {format_rfc3339(due.end)}) ({due.minutes} min)")
    if not requests:
        return dg.SkipReason("nothing due" + (f" ({'; '.join(notes)})" if notes else ""))
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(requested, sort_keys=True))
