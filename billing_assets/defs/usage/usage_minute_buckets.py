import dagster as dg

from billing_assets.defs.partitions import billing_partitions
from billing_assets.defs.resources import BillingStore
from billing_assets.defs.run_context import run_each_slice, summed, window_metadata
from billing_assets.defs.table_contracts import OWNERS, table_metadata
from billing_assets.pipeline.bucket import bucket_slice
from billing_assets.storage import schema


@dg.asset(
    partitions_def=billing_partitions,  # (minute, source): a key reads 2026-11-21-10:07|eu-1
    backfill_policy=dg.BackfillPolicy.single_run(),  # a range of one source is one run
    deps=["usage_samples"],
    group_name="usage",
    kinds={"pandas", "sql"},
    owners=OWNERS,
    metadata=table_metadata(schema.usage_minute_buckets),
)
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
