"""Minute buckets recomputed inside PostgreSQL, for the production database.

The pandas path (`core.buckets.compute_minute_buckets`, used on SQLite) moves
every sample of a window into Python and every bucket back: at ~300 k
samples per source-hour that transfer was most of the bucket step (3.7 s per
source-hour, bench/RESULTS.md round 4), while the arithmetic itself is a
window function. Here one statement reads the window and each series' last
earlier sample (the baseline), derives the deltas with `LAG`, sums them per
minute and upserts only buckets whose values changed.

It is the same rule as `core.counters` / `core.buckets`, written once more in
SQL, so it is held to the same answers: every end-to-end test runs on both
databases against the independent oracle, and `test_buckets_in_database.py`
compares this statement with the pure function on generated histories.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection

from billing_assets.storage.sql import typed

_SERIES = "node_id, env, uuid, inbound_tag"


# Delta rule (core.counters): first sample or a drop (reset) counts in full,
# otherwise the growth; samples before billing_start only set the baseline.
_DELTA = """
    CASE WHEN o.collected_at < :billing_start THEN 0
         WHEN o.prev_{d} IS NULL OR o.{d} < o.prev_{d} THEN o.{d}
         ELSE o.{d} - o.prev_{d} END
"""

RECOMPUTE_BUCKETS = typed(
    # The leading comment names the table within pg_stat_activity's truncated query text.
    f"""
    /* billing: recompute usage_minute_buckets */
    WITH win AS (
        SELECT {_SERIES}, collected_at, email, uplink_bytes_total AS up, downlink_bytes_total AS down, FALSE AS baseline
        FROM usage_samples
        WHERE source_id = :source_id AND collected_at >= :start AND collected_at < :end
    ),
    base AS (
        -- An index seek per series (LATERAL): a join form lets the planner, misled by
        -- fresh ranges past its statistics, hash the source's whole history.
        SELECT p.node_id, p.env, p.uuid, p.inbound_tag, p.collected_at, p.email,
               p.uplink_bytes_total, p.downlink_bytes_total, TRUE
        FROM (SELECT DISTINCT {_SERIES} FROM win) w
        CROSS JOIN LATERAL (
            SELECT * FROM usage_samples s
            WHERE s.source_id = :source_id AND s.node_id = w.node_id AND s.env = w.env
              AND s.uuid = w.uuid AND s.inbound_tag = w.inbound_tag AND s.collected_at < :start
            ORDER BY s.collected_at DESC
            LIMIT 1
        ) p
    ),
    ordered AS (
        SELECT r.*,
               date_trunc('minute', r.collected_at, 'UTC') AS bucket_start,
               LAG(r.up) OVER series AS prev_up,
               LAG(r.down) OVER series AS prev_down,
               -- the minute's last sample carries its email (pandas' groupby "last"), found
               -- from the same window instead of an ordered aggregate per bucket
               date_trunc('minute', LEAD(r.collected_at) OVER series, 'UTC')
                   IS DISTINCT FROM date_trunc('minute', r.collected_at, 'UTC') AS last_in_minute
        FROM (SELECT * FROM win UNION ALL SELECT * FROM base) r
        WINDOW series AS (PARTITION BY {_SERIES} ORDER BY r.collected_at)
    ),
    computed AS (
        SELECT o.node_id, o.env, o.uuid, o.inbound_tag,
               o.bucket_start,
               MAX(CASE WHEN o.last_in_minute THEN o.email END) AS email,
               CAST(SUM({_DELTA.format(d="up")}) AS BIGINT) AS uplink_bytes,
               CAST(SUM({_DELTA.format(d="down")}) AS BIGINT) AS downlink_bytes,
               CAST(COUNT(*) AS INTEGER) AS sample_count
        FROM ordered o
        WHERE NOT o.baseline
        GROUP BY o.node_id, o.env, o.uuid, o.inbound_tag, o.bucket_start
    ),
    written AS (
        INSERT INTO usage_minute_buckets AS b
            ({_SERIES}, bucket_start, source_id, email, uplink_bytes, downlink_bytes, sample_count, updated_at)
        SELECT {_SERIES}, bucket_start, :source_id, email, uplink_bytes, downlink_bytes, sample_count, :now
        FROM computed
        ON CONFLICT ({_SERIES}, bucket_start) DO UPDATE SET
            source_id = excluded.source_id, email = excluded.email, uplink_bytes = excluded.uplink_bytes,
            downlink_bytes = excluded.downlink_bytes, sample_count = excluded.sample_count,
            updated_at = excluded.updated_at
        WHERE (b.email, b.uplink_bytes, b.downlink_bytes, b.sample_count)
              IS DISTINCT FROM (excluded.email, excluded.uplink_bytes, excluded.downlink_bytes, excluded.sample_count)
        RETURNING 1
    )
    SELECT COUNT(*), COALESCE(SUM(sample_count), 0), COALESCE(SUM(uplink_bytes), 0),
           COALESCE(SUM(downlink_bytes), 0), (SELECT COUNT(*) FROM written)
    FROM computed
    """,
    {"start": "ts", "end": "ts", "billing_start": "ts", "now": "ts"},
)


@dataclass(frozen=True)
class Recomputed:
    buckets: int
    samples: int
    uplink_bytes: int
    downlink_bytes: int
    rows_written: int


def recompute_buckets(
    connection: Connection, source_id: str, start: datetime, end: datetime, billing_start: datetime, now: datetime
) -> Recomputed:
    """Recompute [start, end) of one source's buckets and write the changed ones (PostgreSQL only)."""
    params = {"source_id": source_id, "start": start, "end": end, "billing_start": billing_start, "now": now}
    row = connection.execute(RECOMPUTE_BUCKETS, params).one()
    return Recomputed(*(int(value) for value in row))
