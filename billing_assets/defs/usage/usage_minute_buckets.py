import dagster as dg

from billing_assets.defs.partitions import billing_partitions
from billing_assets.defs.resources import BillingStore
from billing_assets.core.units import human_bytes
from billing_assets.defs.minute_metadata import attach_minute_figures, run_metadata
from billing_assets.defs.run_context import run_each_slice, summed
from billing_assets.defs.table_contracts import OWNERS, table_metadata
from billing_assets.pipeline.bucket import bucket_slice
from billing_assets.storage import minute_figures, schema


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
    results = run_each_slice(context, billing, lambda source, work, progress: bucket_slice(engine, source, work, progress=progress))
    totals = summed(results, "samples", "buckets", "rows_written", "uplink_bytes", "downlink_bytes", "held")

    def own(work, _stats) -> dict:
        with engine.connect() as connection:
            rows = minute_figures.bucket_totals(connection, work.source_id, work.start, work.end)
        return {minute: bucket_figures(*values) for minute, values in rows.items()}

    attach_minute_figures(context, results, own, bucket_figures(0, 0, 0, 0))
    return dg.MaterializeResult(metadata=run_metadata(results, totals))


def bucket_figures(buckets: int, samples: int, uplink: int, downlink: int) -> dict:
    return {
        "buckets": buckets,
        "samples": samples,
        "uplink_bytes": uplink,
        "downlink_bytes": downlink,
        "traffic": human_bytes(uplink + downlink),
        "dagster/row_count": buckets,
    }
