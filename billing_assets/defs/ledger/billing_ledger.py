import dagster as dg

from billing_assets.defs.resources import BillingStore
from billing_assets.defs.run_context import billing_asset, run_each_slice, summed, window_metadata
from billing_assets.pipeline.charge import charge_slice


@billing_asset("ledger", {"sql"}, deps=["usage_minute_buckets"])
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
