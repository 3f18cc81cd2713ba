"""Usage check: no implausible delta held back in the run's windows.

A delta above the source's plausibility bound (`max_bytes_per_second`) is not
billed; it waits in `usage_quarantine` until an operator releases it
(`billing quarantine release`). This check turns the window red with the
count and the first hold in words, so a broken counter is seen, not absorbed.
"""

import dagster as dg

from billing_assets.defs.partitions import run_slices
from billing_assets.defs.resources import BillingStore
from billing_assets.defs.run_context import partitioned_check
from billing_assets.storage.quarantine import list_holds


@partitioned_check("usage_minute_buckets", "No implausible counter delta held back (usage_quarantine) in the run's windows.")
def no_implausible_usage(context: dg.AssetCheckExecutionContext, billing: BillingStore) -> dg.AssetCheckResult:
    slices = run_slices(context)
    rates = {source.source_id: source.max_bytes_per_second for source in billing.registry().sources}
    holds = []
    with billing.read_engine().connect() as connection:
        for work in slices:
            holds += list_holds(connection, rates, work.source_id, since=work.start, until=work.end, limit=1001)
    metadata = {"held": len(holds), "minutes": sum(work.minutes for work in slices)}
    if not holds:
        return dg.AssetCheckResult(passed=True, metadata=metadata, description="no implausible usage held")
    metadata["example"] = dg.MetadataValue.json(holds[0].as_dict())
    return dg.AssetCheckResult(
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"{len(holds) if len(holds) <= 1000 else 'over 1000'} implausible deltas held in usage_quarantine, not billed "
            f"(first: {holds[0].reason}); `billing quarantine list` to review, `release` to bill"
        ),
        metadata=metadata,
    )


usage_checks = [no_implausible_usage]
