import dagster as dg

from billing_assets.defs.partitions import billing_partitions
from billing_assets.defs.resources import BillingStore
from billing_assets.defs.minute_metadata import attach_minute_figures, run_metadata
from billing_assets.defs.run_context import run_each_slice, summed
from billing_assets.defs.table_contracts import OWNERS, table_metadata
from billing_assets.pipeline.dedup import dedup_slice
from billing_assets.storage import minute_figures, schema


@dg.asset(
    partitions_def=billing_partitions,  # (minute, source): a key reads 2026-11-21-10:07|eu-1
    backfill_policy=dg.BackfillPolicy.single_run(),  # a range of one source is one run
    deps=["exporter_snapshots"],
    group_name="ingest",
    kinds={"sql"},
    owners=OWNERS,
    metadata=table_metadata(schema.usage_samples),
)
def usage_samples(context: dg.AssetExecutionContext, billing: BillingStore) -> dg.MaterializeResult:
    """Deduplicated samples: each sample identity at most once, first delivery wins.

    Re-deliveries (overlaps, retries, replays) are no-ops enforced by the
    primary key; a re-delivery with different totals is quarantined in
    `sample_conflicts` instead of overwriting what was already billed.
    Deliveries older than the dedup horizon are refused, never billed.
    """
    engine, horizon = billing.engine(), billing.horizon()
    results = run_each_slice(context, billing, lambda source, work, _progress: dedup_slice(engine, source, work, horizon))
    totals = summed(results, "staged", "inserted", "duplicates", "conflicts", "beyond_horizon")
    if totals["conflicts"]:
        context.log.warning(f"{totals['conflicts']} conflicting duplicate deliveries quarantined in sample_conflicts")
    def stored(work, _stats) -> dict:
        with engine.connect() as connection:
            counts = minute_figures.stored_samples(connection, work.source_id, work.start, work.end)
        return {minute: {"samples": count, "dagster/row_count": count} for minute, count in counts.items()}

    attach_minute_figures(context, results, stored, {"samples": 0, "dagster/row_count": 0})
    return dg.MaterializeResult(metadata=run_metadata(results, totals))
