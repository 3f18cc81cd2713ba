import dagster as dg

from billing_assets.defs.resources import BillingStore
from billing_assets.defs.run_context import billing_asset, run_each_slice, summed, window_metadata
from billing_assets.pipeline.bucket import bucket_slice


@billing_asset("usage", {"pandas", "sql"}, deps=["usage_samples"])
def usage_minute_buckets(context: dg.AssetExecutionContext, billing: BillingStore) -> dg.MaterializeResult:
    """Bytes used per (node, env, user, inbound tag, minute), from counter deltas.

    Recomputed from all stored samples of the window plus each series' last
    sample before it, so the result depends only on what has been collected,
    never on the order it arrived in: re-running a window converges to the
    batch answer, and a run that changes nothing writes nothing.
    """
    engine = billing.engine()
    results = run_each_slice(context, billing, lambda source, work: bucket_slice(engine, source, work))
    totals = summed(results, "samples", "buckets", "rows_written", "uplink_bytes", "downlink_bytes", "held")
    return dg.MaterializeResult(
        metadata={**window_metadata([w for w, _ in results]), **totals, "dagster/row_count": totals["buckets"]}
    )
