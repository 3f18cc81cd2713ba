"""Reconcile: re-materialize a trailing range of each source to absorb late data.

Reconcile is a partition backfill: the schedule launches, per enabled source,
one range run over the trailing horizon (what a single-run backfill launches),
and `billing reconcile` submits a real backfill an operator can watch in the UI.
Either way the steps are the normal ones: samples already seen are no-ops,
buckets converge to the batch answer, and the ledger appends corrections only
where a bucket's value changed.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import dagster as dg

from billing_assets.core.timeutil import MINUTE, ceil_minute, floor_minute, format_rfc3339
from billing_assets.defs.automation import clock
from billing_assets.defs.runs import BILLING_ASSETS, range_request, source_tags
from billing_assets.defs.dagster_internals import add_asset_backfill
from billing_assets.settings import Settings
from billing_assets.defs.partitions import SOURCES_PARTITION, earliest_window, partition_key
from billing_assets.defs.resources import BillingStore
from billing_assets.registry.model import RegistryError, Source


class ReconcileError(ValueError):
    """The requested reconcile cannot be submitted; the message says why."""


def reconcile_window(source: Source, since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """[since, until) as whole minutes, clipped to what this source may bill and the partitions hold."""
    start = max(floor_minute(since), floor_minute(source.billing_start), ceil_minute(earliest_window()))
    end = floor_minute(until)
    if end <= start:
        raise ReconcileError(
            f"nothing to reconcile for {source.source_id!r}: the range ends at {format_rfc3339(end)}, "
            f"but it can bill only from {format_rfc3339(start)} (its billing_start, the dedup horizon and whole minutes)"
        )
    return start, end


def require_registered(instance: dg.DagsterInstance, source_ids: list[str]) -> None:
    """Every source must be a partition already: checked for all before anything is submitted."""
    registered = set(instance.get_dynamic_partitions(SOURCES_PARTITION))
    missing = [source_id for source_id in source_ids if source_id not in registered]
    if missing:
        raise ReconcileError(
            f"source(s) {', '.join(map(repr, missing))} not a registered partition; run `billing sources sync` first"
        )


def submit_reconcile_backfill(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    source_id: str,
    start: datetime,
    end: datetime,
    checked: bool = False,
) -> str:
    """Adds an asset backfill of the four billing assets over [start, end) of one source.

    The assets' BackfillPolicy.single_run() makes the backfill daemon launch it
    as one run per contiguous range, tagged like a collection run. `checked`:
    the caller already ran `require_registered` for a batch of sources.
    """
    if not checked:
        require_registered(instance, [source_id])
    return add_asset_backfill(
        instance, defs, uuid.uuid4().hex[:8], partition_key(start, source_id), partition_key(end - MINUTE, source_id),
        BILLING_ASSETS, source_tags(source_id, "reconcile"),
        title=f"reconcile {source_id} [{format_rfc3339(start)}, {format_rfc3339(end)})",
        description="billing reconcile: re-materialize a range; the ledger changes only by corrections",
    )


@dg.schedule(
    cron_schedule="*/30 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    target=dg.AssetSelection.assets(*BILLING_ASSETS),
)
def reconcile_schedule(context: dg.ScheduleEvaluationContext, billing: BillingStore):
    """Every 30 minutes, one range run per enabled source over the trailing horizon."""
    try:
        registry = billing.registry()
    except RegistryError as error:
        return dg.SkipReason(f"registry not loaded: {error}")
    settings = Settings.from_env()
    until = clock.now() - settings.collect_lag
    registered = set(context.instance.get_dynamic_partitions(SOURCES_PARTITION))
    requests = []
    for source in registry.enabled:
        if source.source_id not in registered or source.mode == "legacy_latest":
            continue
        try:
            start, end = reconcile_window(source, until - settings.reconcile_horizon, until)
        except ReconcileError:
            continue
        requests.append(range_request(source.source_id, start, end, "reconcile"))
    return requests or dg.SkipReason("no enabled source to reconcile")
