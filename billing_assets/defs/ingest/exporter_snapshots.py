import dagster as dg

from billing_assets.defs.partitions import billing_partitions
from billing_assets.defs.resources import BillingStore
from billing_assets.defs.minute_metadata import attach_minute_figures, run_metadata
from billing_assets.defs.run_context import run_each_slice, summed
from billing_assets.defs.table_contracts import OWNERS, table_metadata
from billing_assets.pipeline.fetch import fetch_slice
from billing_assets.storage import schema


@dg.asset(
    partitions_def=billing_partitions,  # (minute, source): a key reads 2026-11-21-10:07|eu-1
    backfill_policy=dg.BackfillPolicy.single_run(),  # a range of one source is one run
    group_name="ingest",
    kinds={"python", "sql"},
    owners=OWNERS,
    metadata=table_metadata(schema.exporter_pages),  # each page body as received (migration 0012)
)
def exporter_snapshots(context: dg.AssetExecutionContext, billing: BillingStore) -> dg.MaterializeResult:
    """Every page the exporter returns for the window, kept as received (body, sha256, request).

    Each slice is re-read with a small overlap before its start so deliveries
    that were late for the previous window are picked up; the overlap costs
    nothing downstream because dedup drops what it has already seen. All pages
    of a slice land in one transaction with the source checkpoint, so a
    failure mid-range keeps nothing and the checkpoint never runs ahead.
    """
    engine = billing.engine()
    results = run_each_slice(
        context, billing, lambda source, work, progress: fetch_slice(engine, source, work, run_id=context.run.run_id, progress=progress)
    )
    totals = summed(results, "pages", "items", "samples", "body_bytes")
    attach_minute_figures(context, results, _received, {"samples": 0, "dagster/row_count": 0})
    return dg.MaterializeResult(metadata=run_metadata(results, totals))


def _received(work, stats) -> dict:
    """Samples received per minute of the slice (the overlap's minutes belong to earlier partitions)."""
    return {minute: {"samples": count, "dagster/row_count": count} for minute, count in stats.samples_by_minute.items()}
