"""Dedup: staged deliveries become stored samples, each identity at most once.

Set-based SQL so the database, not Python, decides uniqueness. A sample's
identity (DESIGN.md) is `(source_id, node_id, env, uuid, inbound_tag,
collected_at)`; it is stored as `(series_id, collected_at)` in
`usage_sample_rows`, the series id coming from the `usage_series` dictionary
(issue 14). Per fetch, the series not yet in the dictionary are added first
(a few rows, one per new series), then every staged delivery is joined to its
id, so the window sort and the primary key work on an integer and a time
instead of six varchar columns. Other services read the contract columns
through the `usage_samples` view; nothing here writes through it.

New identities are found with an anti-join against what is stored and
inserted plainly: `ON CONFLICT DO NOTHING` checked every row twice
(speculative insertion) and cost a third of the step. Writers of one source
are serialised (`source_lock`; SQLite writers are serial anyway), which also
makes the dictionary's anti-join safe: a source's series are only ever
created by that source's writers. The unique constraints (the dictionary's
five columns, the samples' primary key) still refuse a duplicate if two
writers ever race: the transaction then fails whole and the caller retries,
so neither a series nor a sample is ever stored twice. The first delivery of
an identity wins; a later delivery with other totals is recorded in
`sample_conflicts` (with the contract columns and both values) and never billed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection

from billing_assets.storage.sql import prefer_hash_joins, typed

from billing_assets.storage.transactions import source_lock

CONFLICT_REASON = "conflicting duplicate: same sample identity delivered with different totals; first delivery kept"

_RANGE = "r.source_id = :source_id AND r.collected_at >= :since AND r.collected_at < :until"
# A staged row's series in the dictionary (`d`), by the four columns under the source.
_SAME_SERIES = "d.source_id = :source_id AND d.node_id = r.node_id AND d.env = r.env AND d.uuid = r.uuid AND d.inbound_tag = r.inbound_tag"
# Stored rows of the same source and range (`u`): one range scan of the (source_id, collected_at) index.
_STORED_RANGE = "u.source_id = :source_id AND u.collected_at >= :since AND u.collected_at < :until"

# Series first seen in this fetch. Only deliveries inside the horizon can be
# stored, so only their series are added.
INSERT_NEW_SERIES = typed(
    f"""
    INSERT INTO usage_series (source_id, node_id, env, uuid, inbound_tag)
    SELECT DISTINCT r.source_id, r.node_id, r.env, r.uuid, r.inbound_tag
    FROM exporter_snapshot_rows r
    WHERE {_RANGE} AND r.collected_at >= :horizon
      AND NOT EXISTS (SELECT 1 FROM usage_series d WHERE {_SAME_SERIES})
    """,
    {"since": "ts", "until": "ts", "horizon": "ts"},
)

INSERT_FIRST_DELIVERIES = typed(
    f"""
    INSERT INTO usage_sample_rows (series_id, collected_at, source_id, email,
                                   uplink_bytes_total, downlink_bytes_total, ingested_at)
    SELECT series_id, collected_at, :source_id, email, uplink_bytes_total, downlink_bytes_total, :now
    FROM (
        SELECT d.series_id, r.collected_at, r.email, r.uplink_bytes_total, r.downlink_bytes_total,
               ROW_NUMBER() OVER (PARTITION BY d.series_id, r.collected_at ORDER BY r.delivery_seq) AS delivery_rank
        FROM exporter_snapshot_rows r
        JOIN usage_series d ON {_SAME_SERIES}
        WHERE {_RANGE} AND r.collected_at >= :horizon
    ) ranked
    WHERE delivery_rank = 1
      AND NOT EXISTS (
        SELECT 1 FROM usage_sample_rows u
        WHERE {_STORED_RANGE} AND u.series_id = ranked.series_id AND u.collected_at = ranked.collected_at
      )
    """,
    {"since": "ts", "until": "ts", "now": "ts", "horizon": "ts"},
)

_QUARANTINE = f"""
    INSERT INTO sample_conflicts (source_id, node_id, env, uuid, inbound_tag, collected_at, window_start,
        kept_uplink_bytes_total, kept_downlink_bytes_total,
        rejected_uplink_bytes_total, rejected_downlink_bytes_total, reason, detected_at)
    SELECT DISTINCT r.source_id, r.node_id, r.env, r.uuid, r.inbound_tag, r.collected_at, :window_start,
        u.uplink_bytes_total, u.downlink_bytes_total, r.uplink_bytes_total, r.downlink_bytes_total,
        :reason, :now
    FROM exporter_snapshot_rows r
    JOIN usage_series d ON {_SAME_SERIES}
    JOIN usage_sample_rows u ON u.series_id = d.series_id AND u.collected_at = r.collected_at
    WHERE {_RANGE}
      AND {_STORED_RANGE}
      AND (u.uplink_bytes_total <> r.uplink_bytes_total OR u.downlink_bytes_total <> r.downlink_bytes_total)
      {{only}}
    ON CONFLICT DO NOTHING
"""
_QUARANTINE_PARAMS = {"since": "ts", "until": "ts", "now": "ts", "window_start": "ts"}

# Run before the insert: deliveries that differ from what was already stored.
# On a window's first pass nothing is stored, so this costs almost nothing.
QUARANTINE_AGAINST_STORED = typed(_QUARANTINE.format(only=""), _QUARANTINE_PARAMS)

# Run after the insert: among identities delivered more than once in this
# fetch (rare), the later deliveries that differ from the first one, which
# the insert has just stored. Together the two are "every staged delivery
# that differs from the stored sample", without joining every staged row to
# every stored row after the insert.
QUARANTINE_REDELIVERED = typed(
    _QUARANTINE.format(
        only="""AND (r.node_id, r.env, r.uuid, r.inbound_tag, r.collected_at) IN (
            SELECT e.node_id, e.env, e.uuid, e.inbound_tag, e.collected_at FROM exporter_snapshot_rows e
            WHERE e.source_id = :source_id AND e.collected_at >= :since AND e.collected_at < :until
            GROUP BY e.node_id, e.env, e.uuid, e.inbound_tag, e.collected_at HAVING COUNT(*) > 1
        )"""
    ),
    _QUARANTINE_PARAMS,
)

COUNT_STAGED = typed(
    f"""
    SELECT COUNT(*), SUM(CASE WHEN r.collected_at < :horizon THEN 1 ELSE 0 END)
    FROM exporter_snapshot_rows r WHERE {_RANGE}
    """,
    {"since": "ts", "until": "ts", "horizon": "ts"},
)


@dataclass(frozen=True)
class DedupStats:
    staged: int
    inserted: int
    conflicts: int
    beyond_horizon: int

    @property
    def duplicates(self) -> int:
        return self.staged - self.inserted - self.beyond_horizon


def dedup_staged(
    connection: Connection, source_id: str, since: datetime, until: datetime, now: datetime, horizon: datetime
) -> DedupStats:
    """Move first deliveries of [since, until) into the stored samples; quarantine conflicts."""
    base = {"source_id": source_id, "since": since, "until": until}
    source_lock(connection, "samples", source_id)
    prefer_hash_joins(connection)  # the anti-join and the conflict joins; see sql.prefer_hash_joins
    quarantine = dict(base, now=now, window_start=since, reason=CONFLICT_REASON)
    staged, beyond = connection.execute(COUNT_STAGED, dict(base, horizon=horizon)).one()
    conflicts = connection.execute(QUARANTINE_AGAINST_STORED, quarantine).rowcount or 0
    connection.execute(INSERT_NEW_SERIES, dict(base, horizon=horizon))
    inserted = connection.execute(INSERT_FIRST_DELIVERIES, dict(base, now=now, horizon=horizon)).rowcount
    # Every staged delivery inside the horizon became a new sample: then no identity was
    # delivered twice in this fetch (a second delivery is never inserted), and there is
    # nothing for QUARANTINE_REDELIVERED to find. That is every window's first pass; the
    # check's grouping of all staged rows cost ~0.4-0.6 s per source-hour for nothing.
    # (Deliveries beyond the horizon are never inserted; one that differs from a stored
    # sample was quarantined against the stored samples above.)
    if (inserted or 0) != int(staged or 0) - int(beyond or 0):
        conflicts += connection.execute(QUARANTINE_REDELIVERED, quarantine).rowcount or 0
    return DedupStats(int(staged or 0), int(inserted or 0), int(conflicts), int(beyond or 0))


def quarantined(connection: Connection, source_id: str, since: datetime, until: datetime, limit: int = 3) -> tuple[int, list[dict]]:
    """How many conflicting deliveries of [since, until) (by collected_at) are quarantined, and the first few."""
    from sqlalchemy import func, select

    from billing_assets.storage.schema import sample_conflicts as table

    where = (table.c.source_id == source_id, table.c.collected_at >= since, table.c.collected_at < until)
    count = connection.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
    examples = connection.execute(select(table).where(*where).order_by(table.c.collected_at, table.c.id).limit(limit))
    return int(count), [dict(row) for row in examples.mappings()]


def conflicts_per_minute(
    connection: Connection, source_ids: list[str], since: datetime, until: datetime
) -> dict[tuple[str, datetime], tuple[int, int]]:
    """Quarantined conflicts of [since, until) per (source, minute of collected_at): (count, id of the first).

    One grouped query for a whole range, so a partitioned check's per-window
    verdicts cost one round trip whatever the range length. A conflict
    belongs to the minute it was collected in, as `quarantined` counts it.
    The id is the minute's first recorded conflict, its example (`conflicts_by_id`).
    """
    from sqlalchemy import func, literal_column, select

    from billing_assets.storage.schema import sample_conflicts as table
    from billing_assets.storage.times import minute_select, parse_minute

    if not source_ids:
        return {}
    minute = literal_column(minute_select(connection, table.c.collected_at.name))
    rows = connection.execute(
        select(table.c.source_id, minute, func.count(), func.min(table.c.id))
        .where(table.c.source_id.in_(source_ids), table.c.collected_at >= since, table.c.collected_at < until)
        .group_by(table.c.source_id, minute)
    )
    return {(source_id, parse_minute(at)): (int(count), int(first)) for source_id, at, count, first in rows}


def conflicts_by_id(connection: Connection, ids: list[int]) -> dict[int, dict]:
    """The quarantined conflicts with these ids (the examples a failing window shows)."""
    from sqlalchemy import select

    from billing_assets.storage.schema import sample_conflicts as table

    if not ids:
        return {}
    return {row["id"]: dict(row) for row in connection.execute(select(table).where(table.c.id.in_(ids))).mappings()}
