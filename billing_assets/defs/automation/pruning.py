"""The daily prune: staging, pages, legacy pulls and old samples past the dedup horizon.

An unpartitioned op in its own job, not an asset: pruning produces nothing to
look at, and it must stay out of the billing assets' (minute x source)
partitions and out of the per-source run queue (no `billing/source` tag), so a
busy source never delays it and it never delays a source. It also creates the
next days' PostgreSQL partitions, so inserts land in day partitions (which the
prune can drop whole) rather than in the DEFAULT one.
"""

import dagster as dg

from billing_assets.defs.automation import clock
from billing_assets.defs.resources import BillingStore
from billing_assets.storage.pruning import prune


@dg.op(description="Delete rows older than the dedup horizon (plus a day), keeping each series' baseline sample.")
def prune_past_horizon(context: dg.OpExecutionContext, billing: BillingStore) -> dg.Output[None]:
    report = prune(billing.engine(), billing.horizon(), clock.now())
    context.log.info(
        f"pruned before {report.cutoff.isoformat()}: {sum(report.rows_deleted.values())} rows in {report.batches} batches, "
        f"{len(report.partitions_dropped)} partitions dropped, {len(report.partitions_created)} created, "
        f"{report.baselines_kept} baselines kept"
    )
    return dg.Output(None, metadata=report.as_metadata())


@dg.job(tags={"billing/trigger": "prune"}, description="Daily pruning of the billing database past the dedup horizon.")
def prune_job():
    prune_past_horizon()


prune_schedule = dg.ScheduleDefinition(
    name="prune_schedule",
    job=prune_job,
    cron_schedule="17 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
