"""Reading the samples a bucket window needs, and writing only changed buckets.

Buckets are a derived, replaceable view of the samples (keyed by the billing
fact key), so they are upserted; the ledger, not this table, is the
append-only history. Writing only rows whose value changed keeps replays
cheap and makes "rows written" a truthful measure of what a replay changed.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from sqlalchemy import Connection

from billing_assets.core.buckets import BUCKET_COLUMNS, BUCKET_KEY, SAMPLE_COLUMNS
from billing_assets.storage.schema import usage_minute_buckets
from billing_assets.storage.sql import frame, typed, upsert

_SAMPLE_TYPES = {"collected_at": "ts", "uplink_bytes_total": "int", "downlink_bytes_total": "int"}

WINDOW_SAMPLES = typed(
    """
    SELECT node_id, env, uuid, inbound_tag, collected_at, email, uplink_bytes_total, downlink_bytes_total
    FROM usage_samples
    WHERE source_id = :source_id AND collected_at >= :start AND collected_at < :end
    """,
    {"start": "ts", "end": "ts"},
    _SAMPLE_TYPES,
)

# One query for every series' last sample before the window: an index seek per
# series on the primary key (source_id, node_id, env, uuid, inbound_tag, collected_at).
BASELINES = typed(
    """
    SELECT s.node_id, s.env, s.uuid, s.inbound_tag, s.collected_at, s.email,
           s.uplink_bytes_total, s.downlink_bytes_total
    FROM (
        SELECT DISTINCT node_id, env, uuid, inbound_tag FROM usage_samples
        WHERE source_id = :source_id AND collected_at >= :start AND collected_at < :end
    ) w
    JOIN usage_samples s
      ON s.source_id = :source_id AND s.node_id = w.node_id AND s.env = w.env
     AND s.uuid = w.uuid AND s.inbound_tag = w.inbound_tag
     AND s.collected_at = (
        SELECT MAX(p.collected_at) FROM usage_samples p
        WHERE p.source_id = :source_id AND p.node_id = w.node_id AND p.env = w.env
          AND p.uuid = w.uuid AND p.inbound_tag = w.inbound_tag AND p.collected_at < :start
     )
    """,
    {"start": "ts", "end": "ts"},
    _SAMPLE_TYPES,
)

EXISTING_BUCKETS = typed(
    """
    SELECT node_id, env, uuid, inbound_tag, bucket_start, email, uplink_bytes, downlink_bytes, sample_count
    FROM usage_minute_buckets
    WHERE source_id = :source_id AND bucket_start >= :start AND bucket_start < :end
    """,
    {"start": "ts", "end": "ts"},
    {"bucket_start": "ts", "uplink_bytes": "int", "downlink_bytes": "int", "sample_count": "int"},
)


def load_window(connection: Connection, source_id: str, start: datetime, end: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    params = {"source_id": source_id, "start": start, "end": end}
    samples = frame(connection, WINDOW_SAMPLES, params, SAMPLE_COLUMNS)
    baselines = frame(connection, BASELINES, params, SAMPLE_COLUMNS) if not samples.empty else samples.iloc[0:0]
    return samples, baselines


def changed_buckets(connection: Connection, source_id: str, start: datetime, end: datetime, computed: pd.DataFrame) -> pd.DataFrame:
    """Rows of `computed` that differ from (or are missing in) the stored buckets."""
    if computed.empty:
        return computed
    stored = frame(connection, EXISTING_BUCKETS, {"source_id": source_id, "start": start, "end": end}, BUCKET_COLUMNS)
    if stored.empty:
        return computed
    stored["bucket_start"] = pd.to_datetime(stored["bucket_start"], utc=True)
    merged = computed.merge(stored, on=BUCKET_KEY, how="left", suffixes=("", "_stored"), indicator=True)
    differs = merged["_merge"] == "left_only"
    for column in ("email", "uplink_bytes", "downlink_bytes", "sample_count"):
        differs |= merged[column] != merged[f"{column}_stored"]
    return computed[differs.to_numpy()]


def write_buckets(connection: Connection, source_id: str, buckets: pd.DataFrame, now: datetime) -> int:
    if buckets.empty:
        return 0
    rows = buckets.assign(source_id=source_id, updated_at=now).to_dict("records")
    for row in rows:
        row["bucket_start"] = row["bucket_start"].to_pydatetime()
        for column in ("uplink_bytes", "downlink_bytes", "sample_count"):
            row[column] = int(row[column])
    upsert(
        connection,
        usage_minute_buckets,
        rows,
        key=BUCKET_KEY,
        update=["source_id", "email", "uplink_bytes", "downlink_bytes", "sample_count", "updated_at"],
    )
    return len(rows)
