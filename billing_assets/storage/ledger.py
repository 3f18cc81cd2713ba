"""Reading each bucket next to what the ledger already charged, and appending.

Appending is guarded twice: a per-source advisory lock on PostgreSQL
serialises the read-compare-append, and the unique (bucket key, entry_seq)
constraint makes a racing duplicate fail instead of charging twice.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from sqlalchemy import Connection

from billing_assets.core.ledger import LEDGER_STATE_COLUMNS
from billing_assets.core.pricing import Pricing, nanos_to_amount
from billing_assets.storage.schema import billing_ledger
from billing_assets.storage.sql import frame, typed

_KEY_JOIN = "l.node_id = b.node_id AND l.env = b.env AND l.uuid = b.uuid AND l.inbound_tag = b.inbound_tag AND l.bucket_start = b.bucket_start"

BUCKETS_WITH_CHARGES = typed(
    f"""
    SELECT b.node_id, b.env, b.uuid, b.inbound_tag, b.bucket_start, b.email, b.uplink_bytes, b.downlink_bytes,
           COALESCE(l.entry_count, 0), COALESCE(l.charged_uplink, 0), COALESCE(l.charged_downlink, 0),
           COALESCE(l.charged_nanos, 0), COALESCE(l.last_seq, 0)
    FROM usage_minute_buckets b
    LEFT JOIN (
        SELECT node_id, env, uuid, inbound_tag, bucket_start, COUNT(*) AS entry_count,
               SUM(uplink_bytes) AS charged_uplink, SUM(downlink_bytes) AS charged_downlink,
               SUM(amount_nanos) AS charged_nanos, MAX(entry_seq) AS last_seq
        FROM billing_ledger
        WHERE source_id = :source_id AND bucket_start >= :start AND bucket_start < :end
        GROUP BY node_id, env, uuid, inbound_tag, bucket_start
    ) l ON {_KEY_JOIN}
    WHERE b.source_id = :source_id AND b.bucket_start >= :start AND b.bucket_start < :end
    """,
    {"start": "ts", "end": "ts"},
    {"bucket_start": "ts"},
)

LEDGER_MISMATCHES = typed(
    f"""
    SELECT COUNT(*) FROM usage_minute_buckets b
    LEFT JOIN (
        SELECT node_id, env, uuid, inbound_tag, bucket_start,
               SUM(uplink_bytes) AS up, SUM(downlink_bytes) AS down
        FROM billing_ledger
        WHERE source_id = :source_id AND bucket_start >= :start AND bucket_start < :end
        GROUP BY node_id, env, uuid, inbound_tag, bucket_start
    ) l ON {_KEY_JOIN}
    WHERE b.source_id = :source_id AND b.bucket_start >= :start AND b.bucket_start < :end
      AND (COALESCE(l.up, 0) <> b.uplink_bytes OR COALESCE(l.down, 0) <> b.downlink_bytes)
    """,
    {"start": "ts", "end": "ts"},
)


def load_ledger_state(connection: Connection, source_id: str, start: datetime, end: datetime) -> pd.DataFrame:
    state = frame(connection, BUCKETS_WITH_CHARGES, {"source_id": source_id, "start": start, "end": end}, LEDGER_STATE_COLUMNS)
    return state


def append_entries(
    connection: Connection, source_id: str, entries: pd.DataFrame, pricing: Pricing, now: datetime, run_id: str | None
) -> int:
    if entries.empty:
        return 0
    rows = entries.to_dict("records")
    for row in rows:
        nanos = int(row["amount_nanos"])
        row.update(
            source_id=source_id,
            amount=nanos_to_amount(nanos),
            amount_nanos=nanos,
            currency=pricing.currency,
            created_at=now,
            run_id=run_id,
            uplink_bytes=int(row["uplink_bytes"]),
            downlink_bytes=int(row["downlink_bytes"]),
            entry_seq=int(row["entry_seq"]),
        )
        if hasattr(row["bucket_start"], "to_pydatetime"):
            row["bucket_start"] = row["bucket_start"].to_pydatetime()
    connection.execute(billing_ledger.insert(), rows)
    return len(rows)


def count_ledger_mismatches(connection: Connection, source_id: str, start: datetime, end: datetime) -> int:
    return int(connection.execute(LEDGER_MISMATCHES, {"source_id": source_id, "start": start, "end": end}).scalar_one())
