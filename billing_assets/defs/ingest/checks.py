"""Ingest check: no quarantined conflicting deliveries in the run's windows.

A conflict (one sample identity delivered twice with different totals) is
never billed and never overwrites the first delivery; it waits in
`sample_conflicts` for a human. This check turns red in the Dagster UI
exactly the windows it belongs to (the minute of its collected_at, on its
source), with the count and a first example, so it is seen rather than
silently absorbed; the run's other windows read green. It stays red on
replays until the upstream is explained: quarantine rows are evidence and are
not deleted.
"""

import dagster as dg

from billing_assets.core.timeutil import format_rfc3339
from billing_assets.defs.resources import BillingStore
from billing_assets.defs.run_context import check_windows, partition_evaluations, partitioned_check, windows_span
from billing_assets.storage.samples import conflicts_by_id, conflicts_per_minute


@partitioned_check("usage_samples", "No conflicting duplicate deliveries quarantined in the window (per minute and source).")
def no_conflicting_deliveries(context: dg.AssetCheckExecutionContext, billing: BillingStore):
    windows = check_windows(context)
    with billing.read_engine().connect() as connection:
        per_minute = conflicts_per_minute(connection, *windows_span(windows))
        examples = conflicts_by_id(connection, [first for _, first in per_minute.values()])
    verdicts = {}
    for key, window in windows.items():
        count, first = per_minute.get(window, (0, None))
        if not count:
            verdicts[key] = (True, {"conflicts": 0}, "no conflicting deliveries")
            continue
        verdicts[key] = (
            False,
            {"conflicts": count, "example": dg.MetadataValue.json(_example(examples[first]))},
            f"{count} conflicting deliveries quarantined in sample_conflicts (first delivery kept, not billed)",
        )
    yield from partition_evaluations(context, verdicts)


def _example(row: dict) -> dict:
    return {
        "source_id": row["source_id"],
        "window_start": format_rfc3339(row["window_start"]),
        "collected_at": format_rfc3339(row["collected_at"]),
        "series": f"{row['node_id']}/{row['env']}/{row['uuid']}/{row['inbound_tag']}",
        "kept_totals": [row["kept_uplink_bytes_total"], row["kept_downlink_bytes_total"]],
        "rejected_totals": [row["rejected_uplink_bytes_total"], row["rejected_downlink_bytes_total"]],
        "reason": row["reason"],
    }


ingest_checks = [no_conflicting_deliveries]
