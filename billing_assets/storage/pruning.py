"""Forgetting what the dedup horizon no longer needs: staging, pages, legacy pulls, old samples.

Nothing older than the horizon can be billed (runs of such windows are refused,
dedup drops such deliveries), so rows older than `now - horizon - margin` are
dead weight. Removing them must never change a bill:

- `usage_sample_rows` (the stored samples behind the `usage_samples` view)
  keeps, per series, its latest sample before the cutoff: the
  bucket step takes the last sample before a window as that window's baseline,
  and without it the next sample of a quiet series would count in full again;
- the cutoff is floored to a day and sits `margin` (1 day) behind the horizon,
  so a window the pipeline still accepts never loses its sample identities.

SQLite deletes in bounded batches, one short write transaction each, so a
collection run never waits behind a long delete. PostgreSQL keeps these tables
range-partitioned by day (migration 0005) and drops whole day partitions past
the cutoff; only stragglers in the DEFAULT partition (rows written for a day
that had no partition yet) are deleted row by row, in batches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import Connection, Engine, bindparam, text

from billing_assets.storage.types import UTCDateTime

DAY = timedelta(days=1)
DEFAULT_MARGIN = DAY
DEFAULT_BATCH_ROWS = 5_000
# Days of partitions kept ready ahead of today (the daily schedule renews them;
# a missed schedule only sends rows to the DEFAULT partition, never fails an insert).
DAYS_AHEAD = 7

# table -> the time column its rows age by (and, on PostgreSQL, its partition key)
PRUNED_TABLES: dict[str, str] = {
    "exporter_snapshot_rows": "collected_at",
    "exporter_pages": "fetch_since",
    "legacy_snapshot_samples": "collected_at",
    "usage_sample_rows": "collected_at",
}
UNLOGGED_TABLES = {"exporter_snapshot_rows"}  # staging, replaceable by a re-fetch (migration 0003)
# A stored sample's series: one integer (the `usage_series` dictionary, migration 0011).
# The dictionary itself is never pruned: it has one row per series, and every
# series keeps its baseline sample.
SERIES = ("series_id",)
_PARTITION_NAME = re.compile(r"^(%s)_(p\d{8}|default)$" % "|".join(PRUNED_TABLES))
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('billing:partitions'))"


def floor_day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def prune_cutoff(now: datetime, horizon: timedelta, margin: timedelta = DEFAULT_MARGIN) -> datetime:
    """Rows strictly older than this go; a whole day, so it is a partition boundary."""
    return floor_day(now - horizon - margin)


def partition_name(table: str, day: datetime) -> str:
    return f"{table}_p{day:%Y%m%d}"


def is_partition_table(name: str) -> bool:
    """A day or DEFAULT partition of a pruned table: not a table of the model (migrations, comparisons)."""
    return bool(_PARTITION_NAME.match(name))


def include_name(name, type_, parent_names) -> bool:
    """For alembic comparisons: day and DEFAULT partitions are made by pruning, not by the models."""
    return not (type_ == "table" and is_partition_table(name))


@dataclass
class PruneReport:
    cutoff: datetime
    rows_deleted: dict[str, int] = field(default_factory=dict)
    partitions_dropped: list[str] = field(default_factory=list)
    partitions_created: list[str] = field(default_factory=list)
    baselines_kept: int = 0
    batches: int = 0

    def as_metadata(self) -> dict:
        return {
            "cutoff": self.cutoff.isoformat(),
            "rows_deleted": sum(self.rows_deleted.values()),
            **{f"{table} rows_deleted": count for table, count in sorted(self.rows_deleted.items())},
            "partitions_dropped": len(self.partitions_dropped),
            "partitions_created": len(self.partitions_created),
            "baselines_kept": self.baselines_kept,
            "batches": self.batches,
        }


def prune(
    engine: Engine,
    horizon: timedelta,
    now: datetime,
    *,
    margin: timedelta = DEFAULT_MARGIN,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> PruneReport:
    """Remove every pruned table's rows older than the cutoff (keeping sample baselines)."""
    report = PruneReport(cutoff=prune_cutoff(now, horizon, margin))
    postgres = engine.dialect.name == "postgresql"
    if postgres:
        with engine.begin() as connection:
            partitioned = [table for table in PRUNED_TABLES if is_partitioned(connection, table)]
        if partitioned:
            ensure_partitions(engine, floor_day(now), floor_day(now) + DAYS_AHEAD * DAY, report)
            _drop_expired_partitions(engine, partitioned, report)
    for table, column in PRUNED_TABLES.items():
        target = f"{table}_default" if postgres and _exists(engine, f"{table}_default") else table
        report.rows_deleted[table] = report.rows_deleted.get(table, 0) + _delete_in_batches(
            engine, table, target, column, report, batch_rows
        )
    return report


# -- row deletes (SQLite tables, PostgreSQL DEFAULT partitions) -----------------------------------


def _redundant_baseline(alias: str) -> str:
    """A sample before the cutoff with a later one of its series also before it: not a baseline."""
    same = " AND ".join(f"p.{name} = {alias}.{name}" for name in SERIES)
    return (
        f"EXISTS (SELECT 1 FROM usage_sample_rows p WHERE {same} "
        f"AND p.collected_at > {alias}.collected_at AND p.collected_at < :cutoff)"
    )


def _delete_in_batches(engine: Engine, table: str, target: str, column: str, report: PruneReport, batch_rows: int) -> int:
    postgres = engine.dialect.name == "postgresql"
    row_id = "ctid" if postgres else "rowid"
    condition = f"d.{column} < :cutoff"
    if table == "usage_sample_rows":
        condition += " AND " + _redundant_baseline("d")
    pick = f"SELECT d.{row_id} FROM {target} d WHERE {condition} LIMIT :batch"
    statement = text(
        f"DELETE FROM {target} WHERE ctid = ANY(ARRAY({pick}))" if postgres else f"DELETE FROM {target} WHERE rowid IN ({pick})"
    ).bindparams(bindparam("cutoff", type_=UTCDateTime), bindparam("batch"))
    deleted = 0
    while True:
        with engine.begin() as connection:
            count = connection.execute(statement, {"cutoff": report.cutoff, "batch": batch_rows}).rowcount
        report.batches += 1
        deleted += count
        if count < batch_rows:
            return deleted


# -- PostgreSQL day partitions ---------------------------------------------------------------------


def is_partitioned(connection: Connection, table: str) -> bool:
    return connection.execute(
        text("SELECT relkind FROM pg_class WHERE relname = :name AND relnamespace = 'public'::regnamespace"), {"name": table}
    ).scalar() == "p"


def _exists(engine: Engine, name: str) -> bool:
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as connection:
        return connection.execute(text("SELECT to_regclass(:name) IS NOT NULL"), {"name": f"public.{name}"}).scalar()


def day_partitions(connection: Connection, table: str) -> dict[datetime, str]:
    """The table's day partitions by day (DEFAULT excluded), read from pg_inherits."""
    rows = connection.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :table"
        ),
        {"table": table},
    ).scalars()
    days = {}
    for name in rows:
        match = re.fullmatch(rf"{table}_p(\d{{8}})", name)
        if match:
            days[datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=timezone.utc)] = name
    return days


def _bound(moment: datetime) -> str:
    return f"'{moment.isoformat()}'"


def create_day_partition(connection: Connection, table: str, day: datetime) -> str:
    """One day partition, taking over any rows of that day already in the DEFAULT partition.

    Created detached, filled from DEFAULT, then attached: creating it attached
    would fail while DEFAULT holds rows of its range, and a failed insert of
    this kind is exactly what the DEFAULT partition exists to avoid.
    """
    column, name, default = PRUNED_TABLES[table], partition_name(table, day), f"{table}_default"
    lo, hi = _bound(day), _bound(day + DAY)
    unlogged = "UNLOGGED " if table in UNLOGGED_TABLES else ""
    connection.execute(text(f"LOCK TABLE {default} IN SHARE ROW EXCLUSIVE MODE"))
    connection.execute(text(f"CREATE {unlogged}TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"))
    connection.execute(
        text(
            f"WITH moved AS (DELETE FROM {default} WHERE {column} >= {lo} AND {column} < {hi} RETURNING *) "
            f"INSERT INTO {name} SELECT * FROM moved"
        )
    )
    connection.execute(text(f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ({lo}) TO ({hi})"))
    return name


def ensure_partitions(engine_or_connection, first_day: datetime, last_day: datetime, report: PruneReport | None = None) -> list[str]:
    """Day partitions [first_day, last_day] of every partitioned pruned table; cheap when they exist."""
    if isinstance(engine_or_connection, Engine):
        with engine_or_connection.begin() as connection:
            return ensure_partitions(connection, first_day, last_day, report)
    connection = engine_or_connection
    if connection.dialect.name != "postgresql":
        return []
    connection.execute(text(_LOCK))
    created = []
    for table in PRUNED_TABLES:
        if not is_partitioned(connection, table):
            continue
        existing = day_partitions(connection, table)
        day = floor_day(first_day)
        while day <= last_day:
            if day not in existing:
                created.append(create_day_partition(connection, table, day))
            day += DAY
    if report is not None:
        report.partitions_created.extend(created)
    return created


def _drop_expired_partitions(engine: Engine, tables: list[str], report: PruneReport) -> None:
    """Drop day partitions that end at or before the cutoff, in one transaction per table.

    `usage_sample_rows` first hands each series' latest expiring sample back to the
    table (detached partitions no longer cover their range, so the rows land in
    DEFAULT): those are the baselines the bucket step still needs. They are
    read from the expiring partitions before the detach, so the exclusive lock
    the detach takes on the table lasts only for one row per series and the drops
    (nothing writes to those days any more: they are past the horizon).
    """
    for table in tables:
        with engine.begin() as connection:
            connection.execute(text(_LOCK))
            expired = [name for day, name in sorted(day_partitions(connection, table).items()) if day + DAY <= report.cutoff]
            if not expired:
                continue
            if table == "usage_sample_rows":
                series = ", ".join(SERIES)
                union = " UNION ALL ".join(f"SELECT * FROM {name}" for name in expired)
                connection.execute(
                    text(
                        f"CREATE TEMPORARY TABLE expiring_baselines ON COMMIT DROP AS "
                        f"SELECT DISTINCT ON ({series}) * FROM ({union}) expiring ORDER BY {series}, collected_at DESC"
                    )
                )
            for name in expired:
                connection.execute(text(f"ALTER TABLE {table} DETACH PARTITION {name}"))
            if table == "usage_sample_rows":
                report.baselines_kept += connection.execute(
                    text("INSERT INTO usage_sample_rows SELECT * FROM expiring_baselines ON CONFLICT DO NOTHING")
                ).rowcount
            for name in expired:
                connection.execute(text(f"DROP TABLE {name}"))
            report.partitions_dropped.extend(expired)
