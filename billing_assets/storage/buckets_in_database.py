"""Minute buckets recomputed inside PostgreSQL, for the production database.

The pandas path (`core.buckets.compute_minute_buckets`, used on SQLite) moves
every sample of a window into Python and every bucket back: at ~300 k
samples per source-hour that transfer was most of the bucket step
(bench/RESULTS.md, round 4), while the arithmetic itself is a
window function. Here one statement reads the window and each series' last
earlier sample (the baseline), derives the deltas with `LAG`, sums them per
minute and upserts only buckets whose values changed.

The window is read from `usage_sample_rows` and ordered per integer
`series_id` (issue 14): sorting and partitioning 300 k rows by one integer
instead of four varchar columns is most of what the series dictionary buys
this step. The dictionary is joined only once a row per bucket is left (and
for the rare held sample), to write the buckets' contract key columns.

It is the same rule as `core.counters` / `core.buckets`, written once more in
SQL, so it is held to the same answers: every end-to-end test runs on both
databases against the independent oracle, and `test_buckets_in_database.py`
compares this statement with the pure function on generated histories.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from billing_assets.core.plausibility import DEFAULT_MAX_BYTES_PER_SECOND, FIRST_SAMPLE_SPAN_US
from billing_assets.storage.sql import typed

_SERIES = "node_id, env, uuid, inbound_tag"


# Delta rule (core.counters): first sample or a drop (reset) counts in full,
# otherwise the growth; samples before billing_start only set the baseline.
_DELTA = """
    CASE WHEN o.collected_at < :billing_start THEN 0
         WHEN o.prev_{d} IS NULL OR o.{d} < o.prev_{d} THEN o.{d}
         ELSE o.{d} - o.prev_{d} END
"""

# Window samples with their deltas and plausibility verdict (core.plausibility),
# shared by both statements below. The bound is floor(rate x elapsed) in exact
# BIGINT arithmetic (whole seconds, then the microseconds), as in the pure code.
_DERIVATION = f"""
    win AS (
        SELECT series_id, collected_at, email, uplink_bytes_total AS up, downlink_bytes_total AS down, FALSE AS baseline
        FROM usage_sample_rows
        WHERE source_id = :source_id AND collected_at >= :start AND collected_at < :end
    ),
    base AS (
        -- An index seek per series (LATERAL): a join form lets the planner, misled by
        -- fresh ranges past its statistics, hash the source's whole history.
        -- The seek is on the primary key (series_id, collected_at).
        SELECT w.series_id, p.collected_at, p.email, p.uplink_bytes_total, p.downlink_bytes_total, TRUE
        FROM (SELECT DISTINCT series_id FROM win) w
        CROSS JOIN LATERAL (
            SELECT * FROM usage_sample_rows s
            WHERE s.series_id = w.series_id AND s.collected_at < :start
            ORDER BY s.collected_at DESC
            LIMIT 1
        ) p
    ),
    ordered AS (
        SELECT r.*,
               date_trunc('minute', r.collected_at, 'UTC') AS bucket_start,
               LAG(r.up) OVER series AS prev_up,
               LAG(r.down) OVER series AS prev_down,
               CAST(date_part('epoch', r.collected_at - LAG(r.collected_at) OVER series) * 1000000 AS BIGINT) AS elapsed_us,
               -- the minute's last sample carries its email (pandas' groupby "last"), found
               -- from the same window instead of an ordered aggregate per bucket
               date_trunc('minute', LEAD(r.collected_at) OVER series, 'UTC')
                   IS DISTINCT FROM date_trunc('minute', r.collected_at, 'UTC') AS last_in_minute
        FROM (SELECT * FROM win UNION ALL SELECT * FROM base) r
        WINDOW series AS (PARTITION BY r.series_id ORDER BY r.collected_at)
    ),
    deltas AS (
        SELECT o.series_id, o.collected_at, o.bucket_start, o.email, o.last_in_minute,
               o.elapsed_us, {_DELTA.format(d="up")} AS d_up, {_DELTA.format(d="down")} AS d_down,
               (COALESCE(o.elapsed_us, :first_span_us) / 1000000) * :rate
                   + ((COALESCE(o.elapsed_us, :first_span_us) % 1000000) * :rate) / 1000000 AS bound
        FROM ordered o
        WHERE NOT o.baseline
    ),
    judged AS (
        SELECT d.*,
               CASE WHEN d.d_up > d.bound THEN d.d_up ELSE 0 END AS held_up,
               CASE WHEN d.d_down > d.bound THEN d.d_down ELSE 0 END AS held_down
        FROM deltas d
    ),
    final AS (
        -- A release applies only to exactly the amount an operator saw; evaluated for
        -- over-bound rows alone (CASE), so the common case costs one comparison.
        SELECT j.*,
               CASE WHEN j.held_up > 0 OR j.held_down > 0 THEN NOT EXISTS (
                   SELECT 1 FROM usage_quarantine q
                   JOIN usage_series d ON d.series_id = j.series_id
                   WHERE q.source_id = :source_id AND q.node_id = d.node_id AND q.env = d.env AND q.uuid = d.uuid
                     AND q.inbound_tag = d.inbound_tag AND q.collected_at = j.collected_at
                     AND q.held_uplink_bytes = j.held_up AND q.held_downlink_bytes = j.held_down
                     AND q.released_at IS NOT NULL
               ) ELSE FALSE END AS held
        FROM judged j
    )
"""

_PARAMS = {"start": "ts", "end": "ts", "billing_start": "ts", "now": "ts", "rate": "int", "first_span_us": "int"}

_RECOMPUTE_BUCKETS = (
    # The leading comment names the table within pg_stat_activity's truncated query text.
    f"""
    /* billing: recompute usage_minute_buckets */
    WITH {_DERIVATION},
    grouped AS (
        SELECT f.series_id, f.bucket_start,
               MAX(CASE WHEN f.last_in_minute THEN f.email END) AS email,
               CAST(SUM(CASE WHEN f.held THEN f.d_up - f.held_up ELSE f.d_up END) AS BIGINT) AS uplink_bytes,
               CAST(SUM(CASE WHEN f.held THEN f.d_down - f.held_down ELSE f.d_down END) AS BIGINT) AS downlink_bytes,
               CAST(COUNT(*) AS INTEGER) AS sample_count,
               CAST(SUM(CASE WHEN f.held THEN 1 ELSE 0 END) AS INTEGER) AS held
        FROM final f
        GROUP BY f.series_id, f.bucket_start
    ),
    computed AS (
        SELECT d.node_id, d.env, d.uuid, d.inbound_tag, g.bucket_start, g.email, g.uplink_bytes, g.downlink_bytes,
               g.sample_count, g.held
        FROM grouped g
        JOIN usage_series d ON d.series_id = g.series_id
    ),
    written AS (
        INSERT INTO usage_minute_buckets AS b
            ({_SERIES}, bucket_start, source_id, email, uplink_bytes, downlink_bytes, sample_count, updated_at)
        SELECT {_SERIES}, bucket_start, :source_id, email, uplink_bytes, downlink_bytes, sample_count, :now
        FROM computed
        {{on_conflict}}
    )
    SELECT COUNT(*), COALESCE(SUM(sample_count), 0), COALESCE(SUM(uplink_bytes), 0),
           COALESCE(SUM(downlink_bytes), 0), (SELECT COUNT(*) FROM written), COALESCE(SUM(held), 0)
    FROM computed
    """
)
_UPSERT = f"""
        ON CONFLICT ({_SERIES}, bucket_start) DO UPDATE SET
            source_id = excluded.source_id, email = excluded.email, uplink_bytes = excluded.uplink_bytes,
            downlink_bytes = excluded.downlink_bytes, sample_count = excluded.sample_count,
            updated_at = excluded.updated_at
        WHERE (b.email, b.uplink_bytes, b.downlink_bytes, b.sample_count)
              IS DISTINCT FROM (excluded.email, excluded.uplink_bytes, excluded.downlink_bytes, excluded.sample_count)
        RETURNING 1"""
RECOMPUTE_BUCKETS = typed(_RECOMPUTE_BUCKETS.replace("{on_conflict}", _UPSERT), _PARAMS)
# A window's first pass: no bucket of it exists yet, so a plain insert does what the upsert
# would, without a speculative insertion per row (~15 % of the step). Should a bucket with
# the same key exist after all (two sources sharing a node_id: the key has no source_id),
# the unique key refuses it and the window is written again by the upsert.
INSERT_NEW_BUCKETS = typed(_RECOMPUTE_BUCKETS.replace("{on_conflict}", "RETURNING 1"), _PARAMS)

ANY_BUCKET_IN_WINDOW = typed(
    "SELECT EXISTS (SELECT 1 FROM usage_minute_buckets WHERE source_id = :source_id AND bucket_start >= :start AND bucket_start < :end)",
    {"start": "ts", "end": "ts"},
)


# Holds are derived like buckets: the window's unreleased holds become exactly
# this derivation's (released ones stay, as the operator's record). Run only
# when the window holds something now or held something before, so a window
# of plausible usage pays for one indexed count, not a second derivation.
REPLACE_HOLDS = typed(
    f"""
    /* billing: replace usage_quarantine holds */
    WITH {_DERIVATION},
    holds AS (
        SELECT d.node_id, d.env, d.uuid, d.inbound_tag, f.collected_at, f.held_up, f.held_down, f.elapsed_us, f.bound
        FROM final f
        JOIN usage_series d ON d.series_id = f.series_id
        WHERE f.held
    ),
    cleared AS (
        DELETE FROM usage_quarantine q
        WHERE q.source_id = :source_id AND q.collected_at >= :start AND q.collected_at < :end AND q.released_at IS NULL
          AND NOT EXISTS (
              SELECT 1 FROM holds h
              WHERE h.node_id = q.node_id AND h.env = q.env AND h.uuid = q.uuid AND h.inbound_tag = q.inbound_tag
                AND h.collected_at = q.collected_at AND h.held_up = q.held_uplink_bytes AND h.held_down = q.held_downlink_bytes
          )
        RETURNING 1
    ),
    quarantined AS (
        INSERT INTO usage_quarantine
            (source_id, {_SERIES}, collected_at, held_uplink_bytes, held_downlink_bytes, elapsed_us, bound_bytes, detected_at)
        SELECT :source_id, {_SERIES}, collected_at, held_up, held_down, elapsed_us, bound, :now
        FROM holds
        ON CONFLICT ON CONSTRAINT uq_usage_quarantine_hold DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT COUNT(*) FROM cleared) + (SELECT COUNT(*) FROM quarantined)
    """,
    _PARAMS,
)

UNRELEASED_IN_WINDOW = typed(
    """
    SELECT EXISTS (
        SELECT 1 FROM usage_quarantine
        WHERE source_id = :source_id AND collected_at >= :start AND collected_at < :end AND released_at IS NULL
    )
    """,
    {"start": "ts", "end": "ts"},
)


@dataclass(frozen=True)
class Recomputed:
    buckets: int
    samples: int
    uplink_bytes: int
    downlink_bytes: int
    rows_written: int
    held: int = 0
    holds_changed: int = 0


def recompute_buckets(
    connection: Connection,
    source_id: str,
    start: datetime,
    end: datetime,
    billing_start: datetime,
    now: datetime,
    max_bytes_per_second: int = DEFAULT_MAX_BYTES_PER_SECOND,
) -> Recomputed:
    """Recompute [start, end) of one source's buckets and holds, writing the changed ones (PostgreSQL only)."""
    params = {
        "source_id": source_id, "start": start, "end": end, "billing_start": billing_start, "now": now,
        "rate": max_bytes_per_second, "first_span_us": FIRST_SAMPLE_SPAN_US,
    }
    # JIT would compile this statement on every call: measured at 0.7-1.5 s of a ~2 s step,
    # more than the per-row work it saves at 300 k rows (EXPLAIN ANALYZE, first-row time).
    connection.exec_driver_sql("SET LOCAL jit = off")
    buckets, samples, uplink, downlink, written, held = (int(v) for v in _write_buckets(connection, params))
    changed = 0
    if held or connection.execute(UNRELEASED_IN_WINDOW, params).scalar_one():
        changed = int(connection.execute(REPLACE_HOLDS, params).scalar_one())
    return Recomputed(buckets, samples, uplink, downlink, written, held, changed)


def _write_buckets(connection: Connection, params: dict) -> tuple:
    if not connection.execute(ANY_BUCKET_IN_WINDOW, params).scalar_one():
        try:
            with connection.begin_nested():
                return connection.execute(INSERT_NEW_BUCKETS, params).one()
        except IntegrityError:
            pass  # a bucket of another source holds one of these keys: the upsert decides
    return connection.execute(RECOMPUTE_BUCKETS, params).one()
