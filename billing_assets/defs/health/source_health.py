"""Source health in the Dagster UI: a `source_health` asset with two checks.

Health is its own unpartitioned asset, materialized by a schedule every five
minutes (so an outage, in which no collection run succeeds, still turns it
red), rather than checks on the partitioned billing assets: Dagster resolves
an unpartitioned check on a partitioned asset by enumerating every partition
of it, millions at fleet scale, in every run. It reads the billing database
only, through a read-only connection that never waits for a writer.
"""

from __future__ import annotations

import dagster as dg

from billing_assets.defs.table_contracts import OWNERS

from billing_assets.reports.source_health import SourceHealth, source_health as source_health_reports
from billing_assets.defs.automation import clock
from billing_assets.settings import Settings
from billing_assets.defs.partitions import earliest_window
from billing_assets.defs.resources import BillingStore

FRESHNESS = "source_freshness"
COMPLETENESS = "source_completeness"


def _freshness(reports: list[SourceHealth]) -> dg.AssetCheckResult:
    late = [r.source_id for r in reports if r.over_budget]
    metadata = {f"{r.source_id} lag_s": (r.lag_s if r.lag_s is not None else -1.0) for r in reports}
    metadata.update({f"{r.source_id} last_error": r.last_error for r in reports if r.last_error})
    return dg.AssetCheckResult(
        check_name=FRESHNESS,
        passed=not late,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"over lag budget: {', '.join(late)}" if late else f"{len(reports)} enabled sources fresh",
        metadata={"sources_over_budget": len(late), **metadata},
    )


def _completeness(reports: list[SourceHealth]) -> dg.AssetCheckResult:
    # Windows after the checkpoint are lag (the freshness check's business); before it they are holes.
    gaps = {report.source_id: report.holes for report in reports if report.holes}
    metadata = {f"{sid} missing_windows": count for sid, count in gaps.items()}
    metadata.update({f"{r.source_id} first_gap": r.first_gap for r in reports if r.first_gap and r.source_id in gaps})
    return dg.AssetCheckResult(
        check_name=COMPLETENESS,
        passed=not gaps,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"gaps in {', '.join(sorted(gaps))}" if gaps else "no gaps before any checkpoint",
        metadata={"sources_with_gaps": len(gaps), **metadata},
    )

# A report, not a table: it writes nothing (it reads `source_checkpoints` and the
# billing tables), so it names no `dagster/table_name`; these are the figures
# it shows for each enabled source, as `<source_id> <figure>` metadata.
REPORT_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("source_id", "text", description="an enabled source of the registry"),
        dg.TableColumn("lag_s", "float", description="seconds its checkpoint is behind now (-1: never collected)"),
        dg.TableColumn("last_error", "text", description="the last failure recorded for it, if any"),
        dg.TableColumn("missing_windows", "int", description="minutes not collected between billing_start and the checkpoint"),
        dg.TableColumn("conflicts", "int", description="conflicting duplicate deliveries quarantined"),
    ]
)

@dg.asset(
    group_name="health",
    kinds={"sql"},
    owners=OWNERS,
    metadata={"dagster/column_schema": REPORT_SCHEMA},
    check_specs=[
        dg.AssetCheckSpec(FRESHNESS, asset="source_health", description="Every enabled source is within its lag budget."),
        dg.AssetCheckSpec(
            COMPLETENESS, asset="source_health",
            description="No missing minute windows between each enabled source's billing_start and its checkpoint.",
        ),
    ],
)
def source_health(billing: BillingStore) -> dg.MaterializeResult:
    """Per-source collection health: lag, last error, missing windows, conflicts."""
    billing.engine()  # a run may migrate (an outage can mean no billing run created the schema yet)
    reports = [
        report
        for report in source_health_reports(
            billing.read_engine(), billing.registry(), clock.now(), Settings.from_env().collect_lag, earliest_window(clock.now())
        )
        if report.enabled
    ]
    metadata: dict = {"enabled_sources": len(reports)}
    for report in reports:
        metadata[f"{report.source_id} lag_s"] = report.lag_s if report.lag_s is not None else -1.0
        metadata[f"{report.source_id} missing_windows"] = report.missing_windows
        metadata[f"{report.source_id} conflicts"] = report.conflicts
        if report.dual_read is not None:
            metadata[f"{report.source_id} dual_read"] = dg.MetadataValue.json(report.dual_read)
            metadata[f"{report.source_id} dual_read_mismatched"] = report.dual_read["mismatched"]
            metadata[f"{report.source_id} dual_read_missing"] = report.dual_read["missing"]
    return dg.MaterializeResult(metadata=metadata, check_results=[_freshness(reports), _completeness(reports)])


health_job = dg.define_asset_job("source_health_job", selection=dg.AssetSelection.assets(source_health))
health_schedule = dg.ScheduleDefinition(
    name="source_health_schedule",
    job=health_job,
    cron_schedule="*/5 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
