"""Ledger check: for the run's partitions, every bucket's entries sum to the bucket.

It runs after the ledger step of the same run, so a red result means the
ledger is out of step with the buckets for a window this run wrote: a run
stopped between the bucket and ledger steps, or a bug. Re-running the
partition appends the missing correction; nothing else repairs it by hand.
"""

import dagster as dg

from billing_assets.defs.partitions import run_slices
from billing_assets.defs.resources import BillingStore
from billing_assets.defs.run_context import partitioned_check
from billing_assets.storage.ledger import count_ledger_mismatches


@partitioned_check("billing_ledger", "Each bucket's ledger entries sum to the bucket, for the run's windows.")
def ledger_matches_buckets(context: dg.AssetCheckExecutionContext, billing: BillingStore) -> dg.AssetCheckResult:
    slices = run_slices(context)
    engine = billing.read_engine()
    mismatched: dict[str, int] = {}
    with engine.connect() as connection:
        for work in slices:
            count = count_ledger_mismatches(connection, work.source_id, work.start, work.end)
            if count:
                mismatched[work.source_id] = mismatched.get(work.source_id, 0) + count
    total = sum(mismatched.values())
    return dg.AssetCheckResult(
        passed=total == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"{total} buckets whose ledger entries do not sum to the bucket ({', '.join(sorted(mismatched))}); "
            "re-run the partitions to append the corrections"
            if total
            else "ledger sums equal the buckets"
        ),
        metadata={"mismatched_buckets": total, "minutes": sum(work.minutes for work in slices)},
    )


ledger_checks = [ledger_matches_buckets]
