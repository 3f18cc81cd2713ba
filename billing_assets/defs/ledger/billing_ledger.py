import dagster as dg

from billing_assets.defs.partitions import billing_partitions
from billing_assets.defs.resources import BillingStore
from billing_assets.defs.run_context import run_each_slice, summed, window_metadata
from billing_assets.defs.table_contracts import OWNERS, table_metadata
from billing_assets.pipeline.charge import charge_slice
from billing_assets.storage import schema


@dg.asset(
    partitions_def=billing_partitions,  # (minute, source): a key reads 2026-11-21-10:07|eu-1
    backfill_policy=dg.BackfillPolicy.single_run(),  # a range of one source is one run
    deps=["usage_minute_buckets"],
    group_name="ledger",
    kinds={"sql"},
    owners=OWNERS,
    metadata=table_metadata(schema.billing_ledger),
)
def billing_ledger(context: dg.AssetExecutionContext, billing: BillingStore) -> dg.MaterializeResult:
    """Append-only charges: the sum of a bucket's entries is what it costs.

    A bucket never charged gets a `charge`; a bucket whose usage changed since
    (late data, reconcile) gets one `correction` for the difference; an
    unchanged bucket gets nothing, so replays never double charge.
    """
    engine, pricing = billing.engine(), billing.pricing()
    results = run_each_slice(
        context, billing, lambda source, work: charge_slice(engine, source, work, pricing, run_id=context.run.run_id)
    )
    totals = summed(results, "buckets", "charges", "corrections", "amount_nanos")
    amount = sum((stats.amount for _, stats in results), start=0)
    return dg.MaterializeResult(
        metadata={
            **window_metadata([w for w, _ in results]),
            "buckets": totals["buckets"],
            "charges": totals["charges"],
            "corrections": totals["corrections"],
            "amount": f"{amount} {pricing.currency}",
            "dagster/row_count": totals["charges"] + totals["corrections"],
        }
    )
