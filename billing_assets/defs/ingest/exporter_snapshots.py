import dagster as dg

from billing_assets.defs.resources import BillingStore
from billing_assets.defs.run_context import billing_asset, run_each_slice, summed, window_metadata
from billing_assets.pipeline.fetch import fetch_slice


@billing_asset("ingest", {"python", "sql"})
def exporter_snapshots(context: dg.AssetExecutionContext, billing: BillingStore) -> dg.MaterializeResult:
    """Every page the exporter returns for the window, staged as received.

    Each slice is re-read with a small overlap before its start so deliveries
    that were late for the previous window are picked up; the overlap costs
    nothing downstream because dedup drops what it has already seen. All pages
    of a slice land in one transaction with the source checkpoint, so a
    failure mid-range stages nothing and the checkpoint never runs ahead.
    """
    engine = billing.engine()
    results = run_each_slice(
        context, billing, lambda source, work: fetch_slice(engine, source, work, run_id=context.run.run_id)
    )
    totals = summed(results, "pages", "items", "samples", "body_bytes")
    return dg.MaterializeResult(
        metadata={**window_metadata([w for w, _ in results]), **totals, "dagster/row_count": totals["samples"]}
    )
