import dagster as dg

from billing_assets.defs.partitions import billing_partitions
from billing_assets.defs.resources import BillingStore
from billing_assets.core.pricing import nanos_to_amount
from billing_assets.core.units import money
from billing_assets.defs.minute_metadata import attach_minute_figures, run_metadata
from billing_assets.defs.run_context import run_each_slice, summed
from billing_assets.defs.table_contracts import OWNERS, table_metadata
from billing_assets.pipeline.charge import charge_slice
from billing_assets.storage import minute_figures, schema


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
        context, billing, lambda source, work, progress: charge_slice(engine, source, work, pricing, run_id=context.run.run_id, progress=progress)
    )
    totals = summed(results, "buckets", "charges", "corrections")
    amount = sum((stats.amount for _, stats in results), start=0)
    run_id = context.run.run_id

    def own(work, _stats) -> dict:
        with engine.connect() as connection:
            rows = minute_figures.ledger_totals(connection, work.source_id, work.start, work.end, run_id)
        return {minute: ledger_figures(*values, currency=pricing.currency) for minute, values in rows.items()}

    attach_minute_figures(context, results, own, ledger_figures(0, 0, 0, currency=pricing.currency))
    return dg.MaterializeResult(metadata={**run_metadata(results, totals), "run_amount": money(amount, pricing.currency)})


def ledger_figures(entries: int, amount_nanos: int, appended: int, *, currency: str) -> dict:
    """The minute's ledger: its entries, what it costs now (their sum), and what this run appended."""
    return {
        "entries": entries,
        "appended": appended,
        "amount": money(nanos_to_amount(amount_nanos), currency),
        "dagster/row_count": entries,
    }
