"""Source health in the Dagster UI: freshness and completeness checks.

They target `exporter_snapshots` (collection is what falls behind) and run
after every collection run and on their own schedule, so an outage, in which
no collection run succeeds, still turns them red. They read the billing
database only; a database problem fails the check, never a billing run.
"""

from __future__ import annotations

import dagster as dg

from billing_assets.defs.health.source_health import SourceHealth, source_health
from billing_assets.defs.ops import clock
from billing_assets.defs.ops.settings import CollectSettings
from billing_assets.defs.partitions import minute_partitions
from billing_assets.defs.resources import BillingStore


def _reports(billing: BillingStore) -> list[SourceHealth]:
    return [
        report
        for report in source_health(
            billing.engine(), billing.registry(), clock.now(), CollectSettings.from_env().lag, minute_partitions.start
        )
        if report.enabled
    ]


@dg.asset_check(asset="exporter_snapshots", blocking=False, description="Every enabled source is within its lag budget.")
def source_freshness(billing: BillingStore) -> dg.AssetCheckResult:
    reports = _reports(billing)
    late = [r.source_id for r in reports if r.over_budget]
    metadata = {f"{r.source_id} lag_s": (r.lag_s if r.lag_s is not None else -1.0) for r in reports}
    metadata.update({f"{r.source_id} last_error": r.last_error for r in reports if r.last_error})
    return dg.AssetCheckResult(
        passed=not late,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"over lag budget: {', '.join(late)}" if late else f"{len(reports)} enabled sources fresh",
        metadata={"sources_over_budget": len(late), **metadata},
    )


@dg.asset_check(
    asset="exporter_snapshots", blocking=False,
    description="No missing minute windows between each enabled source's billing_start and its checkpoint.",
)
def source_completeness(billing: BillingStore) -> dg.AssetCheckResult:
    reports = _reports(billing)
    # Windows after the checkpoint are lag (the freshness check's business); before it they are holes.
    gaps = {report.source_id: report.holes for report in reports if report.holes}
    metadata = {f"{sid} missing_windows": count for sid, count in gaps.items()}
    metadata.update({f"{r.source_id} first_gap": r.first_gap for r in reports if r.first_gap and r.source_id in gaps})
    return dg.AssetCheckResult(
        passed=not gaps,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"gaps in {', '.join(sorted(gaps))}" if gaps else "no gaps before any checkpoint",
        metadata={"sources_with_gaps": len(gaps), **metadata},
    )


health_checks = [source_freshness, source_completeness]
health_check_job = dg.define_asset_job("source_health_job", selection=dg.AssetSelection.checks(*health_checks))
health_schedule = dg.ScheduleDefinition(
    name="source_health_schedule",
    job=health_check_job,
    cron_schedule="*/5 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
