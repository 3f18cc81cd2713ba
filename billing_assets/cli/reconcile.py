"""`billing reconcile`: submit a (source, range) backfill the Dagster UI shows.

The backfill daemon (part of `dagster dev` / `dagster-daemon run`) launches it
as one run per contiguous range; `--wait` is for scripts that want to block.
"""

from __future__ import annotations

import sys
import time


def run_reconcile(source_id: str, since: str, until: str, wait: bool = False, timeout_s: float = 3600) -> int:
    import dagster as dg

    from billing_assets.core.timeutil import format_rfc3339, parse_rfc3339
    from billing_assets.definitions import defs
    from billing_assets.defs.ops.reconcile import ReconcileError, reconcile_window, submit_reconcile_backfill
    from billing_assets.defs.resources import BillingStore
    from billing_assets.registry.model import RegistryError

    try:
        source = BillingStore().registry().get(source_id)
        start, end = reconcile_window(source, parse_rfc3339(since), parse_rfc3339(until))
        instance = dg.DagsterInstance.get()
        backfill_id = submit_reconcile_backfill(instance, defs, source_id, start, end)
    except (RegistryError, ReconcileError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"backfill {backfill_id}: reconcile {source_id} [{format_rfc3339(start)}, {format_rfc3339(end)})")
    if not wait:
        print("the backfill daemon launches it; watch it under Overview > Backfills in the Dagster UI")
        return 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = instance.get_backfill(backfill_id).status
        if status.value.startswith("COMPLETED") or status.value in ("FAILED", "CANCELED"):
            print(f"backfill {backfill_id}: {status.value}")
            return 0 if status.value == "COMPLETED_SUCCESS" else 1
        time.sleep(2)
    print(f"backfill {backfill_id}: still running after {timeout_s:.0f}s", file=sys.stderr)
    return 1
