"""day partitions for the tables pruned past the dedup horizon (PostgreSQL only)

`exporter_snapshot_rows`, `exporter_pages`, `legacy_snapshot_samples` and
`usage_samples` grow with every fetch and are useless past the dedup horizon.
Deleting a month of them row by row would be millions of deletes (WAL, vacuum,
bloat); as daily range partitions, pruning drops whole tables instead
(`storage/pruning.py`). A DEFAULT partition takes any row whose day has no
partition yet, so an insert never fails.

Each table is rebuilt: renamed aside, recreated `PARTITION BY RANGE` with the
same columns, keys, indexes and sequence, given day partitions for every day
of the last 40 that holds data plus yesterday to two days ahead, refilled with
every row, and the old table dropped, all in the migration's transaction.
`exporter_pages` is partitioned by `fetch_since`, so its primary key becomes
`(id, fetch_since)` (a partitioned table's unique keys must hold the partition
key; `id` still comes from the same sequence). SQLite is unchanged: it prunes
by batched deletes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 00:00:00
"""
from datetime import datetime, timedelta, timezone

from alembic import op
from sqlalchemy import text


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

# table: (partition column, primary key before, primary key after, indexes, owned sequence)
TABLES = {
    "exporter_snapshot_rows": ("collected_at", None, None, {"ix_exporter_snapshot_rows_source_time": "source_id, collected_at"}, None),
    "exporter_pages": (
        "fetch_since", "id", "id, fetch_since", {"ix_exporter_pages_source_window": "source_id, fetch_since"}, "exporter_pages_id_seq"
    ),
    "legacy_snapshot_samples": (
        "collected_at",
        "source_id, node_id, env, uuid, inbound_tag, collected_at",
        "source_id, node_id, env, uuid, inbound_tag, collected_at",
        {"ix_legacy_snapshot_samples_source_time": "source_id, collected_at"},
        None,
    ),
    "usage_samples": (
        "collected_at",
        "source_id, node_id, env, uuid, inbound_tag, collected_at",
        "source_id, node_id, env, uuid, inbound_tag, collected_at",
        {"ix_usage_samples_source_time": "source_id, collected_at"},
        None,
    ),
}
UNLOGGED = {"exporter_snapshot_rows"}
DAY = timedelta(days=1)


def _day(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def _rebuild(table: str, *, partitioned: bool) -> None:
    column, pk_before, pk_after, indexes, sequence = TABLES[table]
    old = f"{table}__old"
    bind = op.get_bind()
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    if pk_before:
        op.execute(f"ALTER TABLE {old} RENAME CONSTRAINT {table}_pkey TO {old}_pkey")
    for name in indexes:
        op.execute(f"ALTER INDEX {name} RENAME TO {name}__old")
    unlogged = "UNLOGGED " if table in UNLOGGED and not partitioned else ""
    suffix = f" PARTITION BY RANGE ({column})" if partitioned else ""
    op.execute(f"CREATE {unlogged}TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS){suffix}")
    key = pk_after if partitioned else pk_before
    if key:
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({key})")
    for name, columns in indexes.items():
        op.execute(f"CREATE INDEX {name} ON {table} ({columns})")
    if sequence:
        op.execute(f"ALTER SEQUENCE {sequence} OWNED BY {table}.id")
    if partitioned:
        part_unlogged = "UNLOGGED " if table in UNLOGGED else ""
        op.execute(f"CREATE {part_unlogged}TABLE {table}_default PARTITION OF {table} DEFAULT")
        today = _day(datetime.now(timezone.utc))
        days = {today + offset * DAY for offset in range(-1, 3)}
        days |= {
            _day(row[0])
            for row in bind.execute(
                text(f"SELECT DISTINCT date_trunc('day', {column}, 'UTC') FROM {old} WHERE {column} >= :since"),
                {"since": today - 40 * DAY},
            )
        }
        for day in sorted(days):
            op.execute(
                f"CREATE {part_unlogged}TABLE {table}_p{day:%Y%m%d} PARTITION OF {table} "
                f"FOR VALUES FROM ('{day.isoformat()}') TO ('{(day + DAY).isoformat()}')"
            )
    op.execute(f"INSERT INTO {table} SELECT * FROM {old}")
    op.execute(f"DROP TABLE {old} CASCADE")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        _rebuild(table, partitioned=True)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        _rebuild(table, partitioned=False)
