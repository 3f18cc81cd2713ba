"""Ledger step: append the charges and corrections that make the ledger match.

If another run appended for the same bucket between our read and our insert,
the unique entry_seq constraint rejects our insert; we roll back, re-read and
plan again, so the retry appends only what is still missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import pandas as pd
from sqlalchemy import Connection, Engine

from billing_assets.core.ledger import plan_ledger_entries
from billing_assets.core.pricing import Pricing, nanos_to_amount
from billing_assets.core.timeutil import MINUTE, now_utc
from billing_assets.pipeline.bucket import chunk_for
from billing_assets.pipeline.progress import Progress
from billing_assets.pipeline.slices import Slice
from billing_assets.registry.model import Source
from billing_assets.storage import ledger as ledger_store
from billing_assets.storage.transactions import in_transaction_retrying_races, source_lock

CHUNK = timedelta(hours=1)
MAX_CHUNK_BUCKETS = 100_000  # same memory budget as pipeline.bucket


@dataclass
class LedgerStats:
    buckets: int = 0
    charges: int = 0
    corrections: int = 0
    amount_nanos: int = 0

    @property
    def amount(self) -> Decimal:
        return nanos_to_amount(self.amount_nanos)


def charge_slice(
    engine: Engine,
    source: Source,
    work: Slice,
    pricing: Pricing,
    run_id: str | None = None,
    clock: Callable[[], datetime] = now_utc,
    chunk: timedelta = CHUNK,
    max_buckets: int = MAX_CHUNK_BUCKETS,
    progress: Progress | None = None,
) -> LedgerStats:
    stats = LedgerStats()
    if work.end - work.start > MINUTE:
        with engine.connect() as connection:
            stored = ledger_store.count_buckets(connection, source.source_id, work.start, work.end)
        chunk = chunk_for(stored, work, chunk, max_buckets)
    def plan_and_append(connection: Connection, part: Slice) -> tuple[pd.DataFrame, pd.DataFrame]:
        source_lock(connection, "ledger", source.source_id)
        state = ledger_store.load_ledger_state(connection, source.source_id, part.start, part.end)
        entries = plan_ledger_entries(state, pricing)
        ledger_store.append_entries(connection, source.source_id, entries, pricing, clock(), run_id)
        return state, entries

    for part in work.chunks(chunk):
        state, entries = in_transaction_retrying_races(engine, lambda connection: plan_and_append(connection, part))
        stats.buckets += len(state)
        if not entries.empty:
            kinds = entries["entry_kind"]
            stats.charges += int((kinds == "charge").sum())
            stats.corrections += int((kinds == "correction").sum())
            stats.amount_nanos += int(entries["amount_nanos"].sum())
        if progress:
            progress.advance(part.end, len(state))
    return stats
