"""Usage check: no implausible delta held back in the run's windows.

A delta above the source's plausibility bound (`max_bytes_per_second`) is not
billed; it waits in `usage_quarantine` until an operator releases it
(`billing quarantine release`). This check turns red exactly the windows that
hold one (the minute of its collected_at, on its source), with the count and
the last recorded hold in words, so a broken counter is seen, not absorbed.
"""

import dagster as dg

from billing_assets.defs.resources import BillingStore
from billing_assets.defs.run_context import check_windows, partition_evaluations, partitioned_check, windows_span
from billing_assets.storage.quarantine import holds_by_id, holds_per_minute


@partitioned_check("usage_minute_buckets", "No implausible counter delta held back (usage_quarantine) in the window (per minute and source).")
def no_implausible_usage(context: dg.AssetCheckExecutionContext, billing: BillingStore):
    windows = check_windows(context)
    rates = {source.source_id: source.max_bytes_per_second for source in billing.registry().sources}
    with billing.read_engine().connect() as connection:
        per_minute = holds_per_minute(connection, *windows_span(windows))
        examples = holds_by_id(connection, rates, [last for _, last in per_minute.values()])
    verdicts = {}
    for key, window in windows.items():
        count, last = per_minute.get(window, (0, None))
        if not count:
            verdicts[key] = (True, {"held": 0}, "no implausible usage held")
            continue
        example = examples[last]
        verdicts[key] = (
            False,
            {"held": count, "example": dg.MetadataValue.json(example.as_dict())},
            f"{count} implausible deltas held in usage_quarantine, not billed (e.g. {example.reason}); "
            "`billing quarantine list` to review, `release` to bill",
        )
    yield from partition_evaluations(context, verdicts)


usage_checks = [no_implausible_usage]
