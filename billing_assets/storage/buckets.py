"""Reading the samples a bucket window needs, and writing only changed buckets.

This is the bucket step's storage on SQLite, around the pure pandas function;
PostgreSQL derives them from packed columns instead
(storage/bucket_columns.py, which also holds its LATERAL baseline seek).

Buckets are a derived, replaceable view of the samples (keyed by the billing
fact key), so they are upserted; the ledger, not this table, is the
append-only history. Writing only rows whose value changed keeps replays
cheap and makes "rows written" a truthful measure of what a replay changed.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache

import pandas as pd
from sqlalchemy import Connection

from billing_assets.core.buckets import BUCKET_COLUMNS, BUCKET_KEY, SAMPLE_COLUMNS, SERIES
from billing_assets.storage.schema import usage_minute_buckets
from billing_assets.storage.bulk import bulk_upsert
from billing_assets.storage.dialect import is_postgres
from billing_assets.storage.source_series import in_source_sql, with_series
from billing_assets.storage.sql import read_frame, typed
from billing_assets.storage.times import time_column, time_param, time_select

_SAMPLE_SELECT = "{node_id}, {env}, {uuid}, {inbound_tag}, {collected_at}, {email}, {uplink_bytes_total}, {downlink_bytes_total}"
_SERIES_COLUMNS = ("node_id", "env", "uuid", "inbound_tag")

# Stored rows (`s`, usage_sample_rows) with their series' contract columns (`d`,
# usage_series): the pure function works on the contract columns.
WINDOW_SAMPLES = """
    SELECT {columns}
    FROM usage_sample_rows s
    JOIN usage_series d ON d.series_id = s.series_id
    WHERE {samples_of_source} AND s.collected_at >= :start AND s.collected_at < :end
"""

# One query for every series' last sample before the window: an index seek per
# series on the primary key (series_id, collected_at).
BASELINES = """
    SELECT {columns}
    FROM (
        SELECT DISTINCT series_id FROM usage_sample_rows
        WHERE {series_of_source} AND collected_at >= :start AND collected_at < :end
    ) w
    JOIN usage_sample_rows s
      ON s.series_id = w.series_id
     AND s.collected_at = (
        SELECT MAX(p.collected_at) FROM usage_sample_rows p
        WHERE p.series_id = w.series_id AND p.collected_at < :start
     )
    JOIN usage_series d ON d.series_id = s.series_id
"""

EXISTING_BUCKETS = """
    SELECT b.node_id, b.env, b.uuid, b.inbound_tag, {bucket_start}, b.email, b.uplink_bytes, b.downlink_bytes, b.sample_count
    FROM usage_minute_buckets b
    WHERE b.source_id = :source_id AND b.bucket_start >= :start AND b.bucket_start < :end
"""

WRITE_COLUMNS = (*BUCKET_KEY, "source_id", "email", "uplink_bytes", "downlink_bytes", "sample_count", "updated_at")
UPDATE_COLUMNS = ("source_id", "email", "uplink_bytes", "downlink_bytes", "sample_count", "updated_at")
_RANGE_PARAMS = {"start": "ts", "end": "ts"}


@lru_cache(maxsize=None)
def _statements(time_sql: str, postgres: bool) -> dict:
    """Statements with each time column read in the dialect's bulk-parsable form."""
    columns = _SAMPLE_SELECT.format(
        **{name: f"{'d' if name in _SERIES_COLUMNS else 's'}.{name}" for name in SAMPLE_COLUMNS if name != "collected_at"},
        collected_at=time_sql.format(column="s.collected_at"),
    )
    window = WINDOW_SAMPLES.format(columns=columns, samples_of_source=in_source_sql(postgres, "s.series_id"))
    baselines = BASELINES.format(columns=columns, series_of_source=in_source_sql(postgres))
    return {
        "window": typed(window, _RANGE_PARAMS),
        "baselines": typed(baselines, _RANGE_PARAMS),
        "existing": typed(EXISTING_BUCKETS.format(bucket_start=time_sql.format(column="b.bucket_start")), _RANGE_PARAMS),
        "count": typed(COUNT_SAMPLES.format(series_of_source=in_source_sql(postgres)), _RANGE_PARAMS),
    }


def statements(connection: Connection) -> dict:
    return _statements(time_select(connection, "{column}"), is_postgres(connection))


COUNT_SAMPLES = "SELECT COUNT(*) FROM usage_sample_rows WHERE {series_of_source} AND collected_at >= :start AND collected_at < :end"


def count_samples(connection: Connection, source_id: str, start: datetime, end: datetime) -> int:
    """Samples stored for [start, end): sizes bucket chunks (an index-only range count per series)."""
    params = with_series(connection, {"source_id": source_id, "start": start, "end": end})
    return int(connection.execute(statements(connection)["count"], params).scalar_one())


def load_window(connection: Connection, source_id: str, start: datetime, end: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    params = with_series(connection, {"source_id": source_id, "start": start, "end": end})
    sql = statements(connection)
    samples = read_frame(connection, sql["window"], params, SAMPLE_COLUMNS, times=["collected_at"])
    if samples.empty:
        return samples, samples.iloc[0:0]
    baselines = read_frame(connection, sql["baselines"], params, SAMPLE_COLUMNS, times=["collected_at"])
    return samples, baselines


def changed_buckets(connection: Connection, source_id: str, start: datetime, end: datetime, computed: pd.DataFrame) -> pd.DataFrame:
    """Rows of `computed` that differ from (or are missing in) the stored buckets."""
    if computed.empty:
        return computed
    params = {"source_id": source_id, "start": start, "end": end}
    stored = read_frame(connection, statements(connection)["existing"], params, BUCKET_COLUMNS, times=["bucket_start"])
    if stored.empty:
        return computed
    merged = computed.merge(stored, on=BUCKET_KEY, how="left", suffixes=("", "_stored"), indicator=True)
    differs = merged["_merge"] == "left_only"
    for column in ("email", "uplink_bytes", "downlink_bytes", "sample_count"):
        differs |= merged[column] != merged[f"{column}_stored"]
    return computed[differs.to_numpy()]


def write_buckets(connection: Connection, source_id: str, buckets: pd.DataFrame, now: datetime) -> int:
    if buckets.empty:
        return 0
    count = len(buckets)
    updated_at = time_param(connection)(now)
    rows = zip(
        *(buckets[column].tolist() for column in SERIES),
        time_column(connection, buckets["bucket_start"]),
        [source_id] * count,
        buckets["email"].tolist(),
        *(buckets[column].astype("int64").tolist() for column in ("uplink_bytes", "downlink_bytes", "sample_count")),
        [updated_at] * count,
    )
    return bulk_upsert(connection, usage_minute_buckets.name, WRITE_COLUMNS, rows, key=BUCKET_KEY, update=UPDATE_COLUMNS)
