"""`billing quarantine list | release`: the operator's side of the plausibility bound.

A held delta is never billed by itself. Releasing one is a decision about
money, so it names who and why (kept in `usage_quarantine`), is all-or-none,
and prints the exact reconcile that bills it: the release changes what the
bucket step may count, the next materialization of that window counts it.
"""

from __future__ import annotations

import json
import sys
from billing_assets.core.timeutil import MINUTE, floor_minute, format_rfc3339, now_utc


def _store_and_rates():
    from billing_assets.defs.resources import BillingStore
    from billing_assets.registry.model import RegistryError

    store = BillingStore()
    try:
        rates = {source.source_id: source.max_bytes_per_second for source in store.registry().sources}
    except RegistryError:
        rates = {}  # holds are still listed, in raw figures
    return store, rates


def run_list(source_id: str | None, released: bool, as_json: bool) -> int:
    from billing_assets.storage.quarantine import list_holds

    store, rates = _store_and_rates()
    with store.read_engine().connect() as connection:
        holds = list_holds(connection, rates, source_id, released=released)
    if as_json:
        print(json.dumps({"holds": [hold.as_dict() for hold in holds]}, indent=2))
        return 0
    if not holds:
        print("no " + ("released" if released else "held") + " deltas" + (f" for {source_id!r}" if source_id else ""))
        return 0
    for hold in holds:
        who = f"  released by {hold.released_by}" if hold.released_by else ""
        print(f"{hold.id:>6}  {hold.source_id:<16} {format_rfc3339(hold.collected_at)}  {hold.uuid}/{hold.inbound_tag}: {hold.reason}{who}")
    print(f"\n{len(holds)} {'released' if released else 'held (not billed)'}")
    return 0


def run_release(ids: list[int], released_by: str, reason: str) -> int:
    from billing_assets.storage.quarantine import ReleaseError, release

    if not released_by.strip() or not reason.strip():
        print("error: --by and --reason must not be empty: a release is a billing decision and is recorded", file=sys.stderr)
        return 2
    store, _ = _store_and_rates()
    try:
        with store.engine().begin() as connection:
            released = release(connection, ids, released_by.strip(), reason.strip(), now_utc())
    except ReleaseError as error:
        print(f"error: {error}; nothing released", file=sys.stderr)
        return 2
    print(f"released {len(released)} hold(s); bill them by re-materializing their windows:")
    for source_id, (since, until) in sorted(_windows(released).items()):
        print(f"  billing reconcile --source {source_id} --since {format_rfc3339(since)} --until {format_rfc3339(until)}")
    return 0


def _windows(released: list[dict]) -> dict[str, tuple]:
    """Per source, the minutes holding released samples (a delta lands in its own minute)."""
    spans: dict[str, tuple] = {}
    for row in released:
        minute = floor_minute(row["collected_at"])
        since, until = spans.get(row["source_id"], (minute, minute + MINUTE))
        spans[row["source_id"]] = (min(since, minute), max(until, minute + MINUTE))
    return spans

