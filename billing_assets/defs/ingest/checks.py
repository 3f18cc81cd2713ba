"""Ingest check: no quarantined conflicting deliveries in the run's windows.

A conflict (one sample identity delivered twice with different totals) is
never billed and never overwrites the first delivery; it waits in
`sample_conflicts` for a human. This check turns it red in the Dagster UI
for the windows it belongs to, with the count and a first example, so it is
seen rather than silently absorbed. It stays red on replays until the
upstream is explained: quarantine rows are evidence and are not deleted.
"""

import dagster as dg

from billing_assets.core.timeutil import format_rfc3339
from billing_assets.defs.partitions import run_slices
from billing_assets.defs.resources import BillingStore
from billing_assets.defs.run_context import partitioned_check
from billing_assets.storage.samples import quarantined

@partitioned_check("usage_samples", "No conflicting duplicate deliveries quarantined for the run's windows.")
def no_conflicting_deliveries(context: dg.AssetCheckExecutionContext, billing: BillingStore) -> dg.AssetCheckResult:
    slices = run_slices(context)
    total, example = 0, None
    with billing.read_engine().connect() as connection:
        for work in slices:
            count, rows = quarantined(connection, work.source_id, work.start, work.end, limit=1)
            total += count
            example = example or (rows[0] if rows else None)
    metadata = {"conflicts": total, "minutes": sum(work.minutes for work in slices)}
    if example is None:
        return dg.AssetCheckResult(passed=True, metadata=metadata, description="no conflicting deliveries")
    metadata["example"] = dg.MetadataValue.json(
        {
            "source_id": example["source_id"],
            "window_start": format_rfc3339(example["window_start"]),
            "collected_at": format_rfc3339(example["collected_at"]),
            "series": f"{example['node_id']}/{example['env']}/{example['uuid']}/{example['inbound_tag']}",
            "kept_totals": [example["kept_uplink_bytes_total"], example["kept_downlink_bytes_total"]],
            "rejected_totals": [example["rejected_uplink_bytes_total"], example["rejected_downlink_bytes_total"]],
            "reason": example["reason"],
        }
    )
    return dg.AssetCheckResult(
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{total} conflicting deliveries quarantined in sample_conflicts (first delivery kept, not billed)",
        metadata=metadata,
    )


ingest_checks = [no_conflicting_deliveries]
