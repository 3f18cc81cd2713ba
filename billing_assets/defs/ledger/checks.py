"""Ledger check: for the run's partitions, every bucket's entries sum to the bucket.

It runs after the ledger step of the same run, so a red window means the
ledger is out of step with the buckets of that minute and source: a run
stopped between the bucket and ledger steps, or a bug. Each window gets its
own verdict, so the UI shows which minutes to re-run. Re-running the
partition appends the missing correction; nothing else repairs it by hand.
"""

import dagster as dg

from billing_assets.defs.resources import BillingStore
from billing_assets.defs.run_context import check_windows, partition_evaluations, partitioned_check, windows_span
from billing_assets.storage.ledger import ledger_mismatches_per_minute


@partitioned_check("billing_ledger", "Each bucket's ledger entries sum to the bucket, per window (minute and source).")
def ledger_matches_buckets(context: dg.AssetCheckExecutionContext, billing: BillingStore):
    windows = check_windows(context)
    with billing.read_engine().connect() as connection:
        per_minute = ledger_mismatches_per_minute(connection, *windows_span(windows))
    verdicts = {}
    for key, window in windows.items():
        count = per_minute.get(window, 0)
        verdicts[key] = (
            count == 0,
            {"mismatched_buckets": count},
            f"{count} buckets whose ledger entries do not sum to the bucket; re-run the partition to append the corrections"
            if count
            else "ledger sums equal the buckets",
        )
    yield from partition_evaluations(context, verdicts)


ledger_checks = [ledger_matches_buckets]
