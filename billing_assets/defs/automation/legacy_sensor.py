"""The legacy tick: pull `/v1/snapshots/latest` of every legacy or dual source.

`legacy_latest` sources (including the `EXPORTER_BASE_URL` source used when no
registry exists) bill from these pulls: after staging a snapshot the sensor
requests one range run over the minutes not yet requested, so dedup, buckets
and the ledger process it through the normal assets (whose fetch step skips
the window API for this mode). `dual` sources only store the snapshot for the
dual-read comparison; their billing runs come from the collection sensor.

Cursor (JSON, per source): the earliest minute not yet requested. It moves
back to a pulled snapshot's minute when that minute was already requested (a
late snapshot), so every staged sample's minute is processed by a run that
starts after it was staged; a bucket computed before one of its samples
arrived would otherwise lose that sample's delta for good.
"""

from __future__ import annotations

import json

import dagster as dg

from billing_assets.defs.runs import BILLING_ASSETS, range_tags
from billing_assets.core.timeutil import ceil_minute, floor_minute, format_rfc3339, parse_rfc3339
from billing_assets.defs.automation import clock
from billing_assets.defs.automation.sensor_cursor import load_cursor
from billing_assets.defs.runs import has_unfinished_run, source_tags
from billing_assets.defs.partitions import SOURCES_PARTITION, earliest_window
from billing_assets.defs.resources import BillingStore
from billing_assets.pipeline.legacy import PULLED_MODES, pull_latest
from billing_assets.registry.model import RegistryError
from billing_assets.transport.client import RetryPolicy
from billing_assets.transport.errors import SourceFetchError

# A sensor tick must stay short: one quick retry, the next tick is 30 s away.
SENSOR_RETRY = RetryPolicy(attempts=2, backoff_s=0.5)


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    target=dg.AssetSelection.assets(*BILLING_ASSETS),
)
def legacy_latest_sensor(context: dg.SensorEvaluationContext, billing: BillingStore):
    """Pulls the latest snapshot of each enabled legacy/dual source; requests billing runs for legacy ones."""
    try:
        registry = billing.registry()
    except RegistryError as error:
        return dg.SkipReason(f"registry not loaded: {error}")
    sources = [source for source in registry.enabled if source.mode in PULLED_MODES]
    if not sources:
        return dg.SkipReason("no enabled legacy_latest or dual source")
    engine = billing.engine()
    now = clock.now()
    registered = set(context.instance.get_dynamic_partitions(SOURCES_PARTITION))
    pending = load_cursor(context.cursor)
    earliest = ceil_minute(earliest_window(now))
    requests, notes = [], []
    for source in sources:
        sid = source.source_id
        try:
            pulled = pull_latest(engine, source, clock.now, SENSOR_RETRY)
        except SourceFetchError as error:  # one failing source never stops the others
            context.log.warning(str(error))
            notes.append(str(error))
            continue
        notes.append(f"{sid}: pulled {pulled.samples} samples at {format_rfc3339(pulled.collected_at)} ({pulled.mode})")
        if source.mode != "legacy_latest":
            continue
        minute = floor_minute(pulled.collected_at)
        if sid not in pending:
            start = minute
        elif pulled.repeated:  # staged before, so already inside a requested or pending range
            start = parse_rfc3339(pending[sid])
        else:
            start = min(parse_rfc3339(pending[sid]), minute)
        start = max(start, earliest)
        pending[sid] = format_rfc3339(start)
        end = floor_minute(now)
        if end <= start:
            continue
        if sid not in registered:
            notes.append(f"{sid}: not registered yet")
            continue
        if has_unfinished_run(context.instance, sid):
            notes.append(f"{sid}: previous run still queued or running")
            continue
        requests.append(
            dg.RunRequest(
                # The snapshot time makes a re-opened range (late snapshot) a new run key, which
                # the daemon would otherwise skip as already launched.
                run_key=f"legacy:{sid}:{format_rfc3339(start)}:{format_rfc3339(end)}:{format_rfc3339(pulled.collected_at)}",
                tags={**range_tags(sid, start, end), **source_tags(sid, "legacy")},
            )
        )
        pending[sid] = format_rfc3339(end)
        context.log.info(f"{sid}: requesting [{format_rfc3339(start)}, {format_rfc3339(end)})")
    cursor = json.dumps(pending, sort_keys=True)
    if not requests:
        return dg.SensorResult(skip_reason=dg.SkipReason("; ".join(notes) or "nothing due"), cursor=cursor)
    return dg.SensorResult(run_requests=requests, cursor=cursor)
