"""Dual-read comparison: what `/latest` returned against what the window API billed.

Only `legacy_snapshot_samples` rows inside a range the window path has
completed (before its checkpoint) are compared, so collection lag is not
reported as missing data. Aggregation happens in SQL (per snapshot time and
per series-minute); Python folds at most a few hundred rows into minutes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

from sqlalchemy import Connection

from billing_assets.core.timeutil import floor_minute, format_rfc3339
from billing_assets.storage.sql import typed

_LEGACY_RANGE = "l.source_id = :source_id AND l.collected_at >= :since AND l.collected_at < :until"
_SAME_SAMPLE = (
    "u.source_id = l.source_id AND u.node_id = l.node_id AND u.env = l.env"
    " AND u.uuid = l.uuid AND u.inbound_tag = l.inbound_tag AND u.collected_at = l.collected_at"
)

SAMPLE_COMPARISON = typed(
    f"""
    SELECT l.collected_at AS collected_at,
           COUNT(*) AS legacy,
           SUM(CASE WHEN u.source_id IS NULL THEN 1 ELSE 0 END) AS missing,
           SUM(CASE WHEN u.source_id IS NOT NULL AND (u.uplink_bytes_total <> l.uplink_bytes_total
                    OR u.downlink_bytes_total <> l.downlink_bytes_total) THEN 1 ELSE 0 END) AS mismatched
    FROM legacy_snapshot_samples l
    LEFT JOIN usage_samples u ON {_SAME_SAMPLE}
    WHERE {_LEGACY_RANGE}
    GROUP BY l.collected_at
    ORDER BY l.collected_at
    """,
    {"since": "ts", "until": "ts"},
    {"collected_at": "ts", "legacy": "int", "missing": "int", "mismatched": "int"},
)

# Minute of a stored UTCDateTime, in the column's own stored form on each dialect
# (SQLite stores SQLAlchemy's 'YYYY-MM-DD HH:MM:SS.ffffff' text). Not a value: no binding needed.
_MINUTE = {
    "postgresql": "date_trunc('minute', l.collected_at)",
    "sqlite": "strftime('%Y-%m-%d %H:%M:00.000000', l.collected_at)",
}


def _bucket_comparison(dialect: str):
    return typed(
        f"""
        SELECT s.minute AS minute, COUNT(*) AS series_minutes,
               SUM(CASE WHEN b.node_id IS NULL THEN 0 ELSE 1 END) AS with_bucket
        FROM (
            SELECT DISTINCT l.node_id, l.env, l.uuid, l.inbound_tag, {_MINUTE[dialect]} AS minute
            FROM legacy_snapshot_samples l
            WHERE {_LEGACY_RANGE}
        ) s
        LEFT JOIN usage_minute_buckets b ON b.node_id = s.node_id AND b.env = s.env AND b.uuid = s.uuid
            AND b.inbound_tag = s.inbound_tag AND b.bucket_start = s.minute
        GROUP BY s.minute
        ORDER BY s.minute
        """,
        {"since": "ts", "until": "ts"},
        {"minute": "ts", "series_minutes": "int", "with_bucket": "int"},
    )


_BUCKET_COMPARISON = {name: _bucket_comparison(name) for name in _MINUTE}


@dataclass
class MinuteComparison:
    minute: str
    legacy_samples: int = 0
    matched: int = 0
    missing: int = 0
    mismatched: int = 0
    series_minutes: int = 0
    with_bucket: int = 0

    @property
    def differs(self) -> bool:
        return bool(self.missing or self.mismatched or self.series_minutes != self.with_bucket)


@dataclass
class DualReadReport:
    since: str
    until: str
    legacy_samples: int = 0
    matched: int = 0
    missing: int = 0
    """Legacy samples the window API never delivered."""
    mismatched: int = 0
    """Same sample identity, different totals."""
    series_minutes: int = 0
    """Distinct (series, minute) seen by the legacy pulls."""
    series_minutes_with_bucket: int = 0
    minutes: list[MinuteComparison] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"legacy {self.legacy_samples} samples, {self.matched} matched, {self.missing} missing, "
            f"{self.mismatched} mismatched; {self.series_minutes_with_bucket}/{self.series_minutes} series-minutes bucketed"
        )

    def as_dict(self, max_minutes: int = 10) -> dict:
        """Totals plus the first minutes that differ (never the whole range)."""
        data = {key: value for key, value in asdict(self).items() if key != "minutes"}
        differing = [m for m in self.minutes if m.differs]
        data["minutes_compared"] = len(self.minutes)
        data["differing_minutes"] = [asdict(m) for m in differing[:max_minutes]]
        data["summary"] = self.summary()
        return data


def compare_dual_read(connection: Connection, source_id: str, since: datetime, until: datetime) -> DualReadReport:
    """Legacy samples of [since, until) (by collected_at) against usage_samples and buckets."""
    report = DualReadReport(format_rfc3339(since), format_rfc3339(until))
    if until <= since:
        return report
    params = {"source_id": source_id, "since": since, "until": until}
    by_minute: dict[datetime, MinuteComparison] = {}

    def minute_of(value: datetime) -> MinuteComparison:
        key = floor_minute(value)
        return by_minute.setdefault(key, MinuteComparison(format_rfc3339(key)))

    for row in connection.execute(SAMPLE_COMPARISON, params).mappings():
        entry = minute_of(row["collected_at"])
        legacy, missing, mismatched = int(row["legacy"]), int(row["missing"] or 0), int(row["mismatched"] or 0)
        entry.legacy_samples += legacy
        entry.missing += missing
        entry.mismatched += mismatched
        entry.matched += legacy - missing - mismatched
    statement = _BUCKET_COMPARISON.get(connection.dialect.name, _BUCKET_COMPARISON["sqlite"])
    for row in connection.execute(statement, params).mappings():
        entry = minute_of(row["minute"])
        entry.series_minutes += int(row["series_minutes"])
        entry.with_bucket += int(row["with_bucket"] or 0)
    report.minutes = [by_minute[key] for key in sorted(by_minute)]
    for entry in report.minutes:
        report.legacy_samples += entry.legacy_samples
        report.matched += entry.matched
        report.missing += entry.missing
        report.mismatched += entry.mismatched
        report.series_minutes += entry.series_minutes
        report.series_minutes_with_bucket += entry.with_bucket
    return report
