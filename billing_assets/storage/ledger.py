"""Reading each bucket next to what the ledger already charged, and appending.

Appending is guarded twice: a per-source advisory lock on PostgreSQL
serialises the read-compare-append, and the unique (bucket key, entry_seq)
constraint makes a racing duplicate fail instead of charging twice.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from sqlalchemy import Connection, bindparam, text

from billing_assets.core.ledger import LEDGER_STATE_COLUMNS
from billing_assets.core.pricing import Pricing, nanos_to_amount
from billing_assets.storage.schema import billing_ledger
from billing_assets.storage.bulk import bulk_insert
from billing_assets.storage.sql import frame, prefer_hash_joins, typed
from billing_assets.storage.times import minute_select, parse_minute, time_column, time_param
from billing_assets.storage.types import UTCDateTime

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

def _ledger_mismatches_per_minute_sql(minute: str) -> str:
    return f"""
    SELECT b.source_id, {minute} AS minute, COUNT(*) FROM usage_minute_buckets b
    LEFT JOIN (
        SELECT source_id, node_id, env, uuid, inbound_tag, bucket_start,
               SUM(uplink_bytes) AS up, SUM(downlink_bytes) AS down
        FROM billing_ledger
        WHERE source_id IN :source_ids AND bucket_start >= :start AND bucket_start < :end
        GROUP BY source_id, node_id, env, uuid, inbound_tag, bucket_start
    ) l ON l.source_id = b.source_id AND {_KEY_JOIN}
    WHERE b.source_id IN :source_ids AND b.bucket_start >= :start AND b.bucket_start < :end
      AND (COALESCE(l.up, 0) <> b.uplink_bytes OR COALESCE(l.down, 0) <> b.downlink_bytes)
    GROUP BY b.source_id, {minute}
    """


COUNT_BUCKETS = typed(
    "SELECT COUNT(*) FROM usage_minute_buckets WHERE source_id = :source_id AND bucket_start >= :start AND bucket_start < :end",
    {"start": "ts", "end": "ts"},
)


def count_buckets(connection: Connection, source_id: str, start: datetime, end: datetime) -> int:
    """Buckets stored for [start, end): sizes ledger chunks."""
    return int(connection.execute(COUNT_BUCKETS, {"source_id": source_id, "start": start, "end": end}).scalar_one())


def load_ledger_state(connection: Connection, source_id: str, start: datetime, end: datetime) -> pd.DataFrame:
    prefer_hash_joins(connection)
    state = frame(connection, BUCKETS_WITH_CHARGES, {"source_id": source_id, "start": start, "end": end}, LEDGER_STATE_COLUMNS)
    return state


APPEND_COLUMNS = (
    "node_id", "env", "uuid", "inbound_tag", "bucket_start", "entry_seq", "source_id", "email", "uplink_bytes",
    "downlink_bytes", "amount", "amount_nanos", "currency", "plan", "entry_kind", "created_at", "run_id",
)  # fmt: skip


def append_entries(
    connection: Connection, source_id: str, entries: pd.DataFrame, pricing: Pricing, now: datetime, run_id: str | None
) -> int:
    """Append in bulk (COPY / executemany); a racing duplicate still raises IntegrityError."""
    if entries.empty:
        return 0
    count = len(entries)
    nanos = entries["amount_nanos"].astype("int64").tolist()
    created_at = time_param(connection)(now)
    rows = zip(
        *(entries[column].tolist() for column in ("node_id", "env", "uuid", "inbound_tag")),
        time_column(connection, entries["bucket_start"]),
        entries["entry_seq"].astype("int64").tolist(),
        [source_id] * count,
        entries["email"].tolist(),
        entries["uplink_bytes"].astype("int64").tolist(),
        entries["downlink_bytes"].astype("int64").tolist(),
        [str(nanos_to_amount(value)) for value in nanos],
        nanos,
        [pricing.currency] * count,
        entries["plan"].tolist(),
        entries["entry_kind"].tolist(),
        [created_at] * count,
        [run_id] * count,
    )
    return bulk_insert(connection, billing_ledger.name, APPEND_COLUMNS, rows)


def ledger_mismatches_per_minute(
    connection: Connection, source_ids: list[str], start: datetime, end: datetime
) -> dict[tuple[str, datetime], int]:
    """Buckets of [start, end) whose ledger entries do not sum to them, per (source, bucket minute).

    One grouped query for a whole range (a hash join, see `prefer_hash_joins`),
    so the ledger check's per-window verdicts cost one round trip whatever the
    range length. Minutes without a mismatch are absent.
    """
    if not source_ids:
        return {}
    prefer_hash_joins(connection)  # 8+ minutes as a nested loop on fresh ranges; see sql.prefer_hash_joins
    statement = text(_ledger_mismatches_per_minute_sql(minute_select(connection, "b.bucket_start"))).bindparams(
        bindparam("source_ids", expanding=True), bindparam("start", type_=UTCDateTime()), bindparam("end", type_=UTCDateTime())
    )
    rows = connection.execute(statement, {"source_ids": list(source_ids), "start": start, "end": end})
    return {(source_id, parse_minute(minute)): int(count) for source_id, minute, count in rows}
