"""Ledger planning: which entries make the ledger equal the buckets again.

The ledger is append-only. For each bucket we compare its current usage with
the sum of the entries already written for it: nothing written yet means a
`charge`, a difference means one `correction` for exactly that difference,
and equality means nothing at all, which is what makes replays free.
"""

from __future__ import annotations

import pandas as pd

from billing_assets.core.buckets import BUCKET_KEY
from billing_assets.core.pricing import Pricing

LEDGER_STATE_COLUMNS = [
    *BUCKET_KEY,
    "email",
    "uplink_bytes",
    "downlink_bytes",
    "entry_count",
    "charged_uplink",
    "charged_downlink",
    "charged_nanos",
    "last_seq",
]
ENTRY_COLUMNS = [
    *BUCKET_KEY,
    "entry_seq",
    "email",
    "uplink_bytes",
    "downlink_bytes",
    "amount_nanos",
    "plan",
    "entry_kind",
]


def plan_ledger_entries(state: pd.DataFrame, pricing: Pricing) -> pd.DataFrame:
    """Entries to append, given buckets joined with their ledger sums.

    `state` has one row per bucket with its usage and what is already charged
    (`entry_count` 0 when never charged). A zero-usage bucket that was never
    charged gets no entry: an empty charge would only add rows. Only a change
    in bytes triggers an entry; editing the price list does not silently
    re-rate history on the next replay (a correction, when one is due, is
    priced so the bucket's entries sum to today's price of its usage).
    """
    if state.empty:
        return pd.DataFrame(columns=ENTRY_COLUMNS)
    up = state["uplink_bytes"].astype("int64")
    down = state["downlink_bytes"].astype("int64")
    charged_up = state["charged_uplink"].astype("int64")
    charged_down = state["charged_downlink"].astype("int64")
    never = state["entry_count"].astype("int64") == 0
    plans = [pricing.plan_for(uuid) for uuid in state["uuid"].tolist()]
    target_nanos = [plan.amount_nanos(u, d) for plan, u, d in zip(plans, up.tolist(), down.tolist())]
    amount = pd.Series(target_nanos, index=state.index, dtype="int64") - state["charged_nanos"].astype("int64")
    changed = (up != charged_up) | (down != charged_down)
    needs_entry = changed & ~(never & (up == 0) & (down == 0))
    todo = state[needs_entry]
    if todo.empty:
        return pd.DataFrame(columns=ENTRY_COLUMNS)
    entries = todo[BUCKET_KEY + ["email"]].copy()
    entries["uplink_bytes"] = (up - charged_up)[needs_entry]
    entries["downlink_bytes"] = (down - charged_down)[needs_entry]
    entries["amount_nanos"] = amount[needs_entry]
    entries["plan"] = [plan.name for plan, needed in zip(plans, needs_entry.tolist()) if needed]
    entries["entry_kind"] = ["charge" if n else "correction" for n in never[needs_entry].tolist()]
    entries["entry_seq"] = todo["last_seq"].astype("int64") + 1
    return entries[ENTRY_COLUMNS].reset_index(drop=True)
