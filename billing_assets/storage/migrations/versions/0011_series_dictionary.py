"""series dictionary: samples keyed by (series_id, collected_at), `usage_samples` a view

Issue 14. Every stored sample carried its identity as six columns, five of
them varchar, and its primary key index was those six: per source-hour the
insert into that heap and its two indexes was the largest cost of dedup, and
the bucket step sorted 300 k rows by four varchar columns (bench/RESULTS.md,
rounds 5 and 6). Now:

- `usage_series` holds one integer per `(source_id, node_id, env, uuid,
  inbound_tag)`, unique on the five (one row per series, not per sample);
- `usage_sample_rows` holds the samples keyed by `(series_id, collected_at)`,
  with `source_id` kept for the per-source time range index; on PostgreSQL it
  is day-partitioned as `usage_samples` was (migration 0005), with the same
  day partitions and a DEFAULT one, so pruning keeps dropping whole days;
- `usage_samples`, the read contract, becomes a view with exactly the columns
  (and column order) of the table it replaces.

The sample identity is unchanged: one series id per five-column series, one
row per (series, collected_at), so the old primary key's uniqueness carries
over exactly. Every existing row is moved, in the migration's transaction,
and the counts are compared before the old table is dropped: an upgrade that
would lose or duplicate a sample fails instead. Buckets and the ledger are
not touched, so nothing can be billed twice by the upgrade itself.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 00:00:00
"""
import re
from datetime import datetime, timedelta, timezone

from alembic import op
import sqlalchemy as sa
from sqlalchemy import text

import billing_assets.storage.types


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

DAY = timedelta(days=1)
SERIES = "source_id, node_id, env, uuid, inbound_tag"
SAME_SERIES = " AND ".join(f"d.{name} = u.{name}" for name in SERIES.split(", "))
# The contract columns, in the order the table had them (0001).
VIEW = """
    CREATE VIEW usage_samples AS
    SELECT s.source_id, s.node_id, s.env, s.uuid, s.inbound_tag, r.collected_at, r.email,
           r.uplink_bytes_total, r.downlink_bytes_total, r.ingested_at
    FROM usage_sample_rows r
    JOIN usage_series s ON s.series_id = r.series_id
"""


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _is_partitioned(table: str) -> bool:
    return op.get_bind().execute(
        text("SELECT relkind FROM pg_class WHERE relname = :name AND relnamespace = 'public'::regnamespace"), {"name": table}
    ).scalar() == "p"


def _day_partitions(table: str) -> list[datetime]:
    names = op.get_bind().execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :table"
        ),
        {"table": table},
    ).scalars()
    days = []
    for name in names:
        match = re.fullmatch(rf"{table}_p(\d{{8}})", name)
        if match:
            days.append(datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=timezone.utc))
    return sorted(days)


def _partition_like(source: str, target: str) -> None:
    """`target` gets a DEFAULT partition and a day partition for every day partition of `source`."""
    op.execute(f"CREATE TABLE {target}_default PARTITION OF {target} DEFAULT")
    for day in _day_partitions(source):
        op.execute(
            f"CREATE TABLE {target}_p{day:%Y%m%d} PARTITION OF {target} "
            f"FOR VALUES FROM ('{day.isoformat()}') TO ('{(day + DAY).isoformat()}')"
        )


def _count(table: str) -> int:
    return int(op.get_bind().execute(text(f"SELECT COUNT(*) FROM {table}")).scalar())


def _check_same_count(before: int, after: str) -> None:
    moved = _count(after)
    if moved != before:
        raise RuntimeError(f"series dictionary migration: {before} samples before, {moved} in {after}; nothing was changed")


def upgrade() -> None:
    postgres = _postgres()
    partitioned = postgres and _is_partitioned("usage_samples")
    op.create_table('usage_series',
    sa.Column('series_id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('source_id', sa.String(length=256), nullable=False),
    sa.Column('node_id', sa.String(length=256), nullable=False),
    sa.Column('env', sa.String(length=256), nullable=False),
    sa.Column('uuid', sa.String(length=256), nullable=False),
    sa.Column('inbound_tag', sa.String(length=256), nullable=False),
    sa.PrimaryKeyConstraint('series_id'),
    sa.UniqueConstraint('source_id', 'node_id', 'env', 'uuid', 'inbound_tag', name='uq_usage_series_identity')
    )
    op.create_table('usage_sample_rows',
    sa.Column('series_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('collected_at', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('source_id', sa.String(length=256), nullable=False),
    sa.Column('email', sa.Text(), nullable=False),
    sa.Column('uplink_bytes_total', sa.BigInteger(), nullable=False),
    sa.Column('downlink_bytes_total', sa.BigInteger(), nullable=False),
    sa.Column('ingested_at', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('series_id', 'collected_at'),
    **({'postgresql_partition_by': 'RANGE (collected_at)'} if partitioned else {})
    )
    op.create_index('ix_usage_sample_rows_source_time', 'usage_sample_rows', ['source_id', 'collected_at'], unique=False)
    if partitioned:
        _partition_like("usage_samples", "usage_sample_rows")

    before = _count("usage_samples")
    # Ids in series order, so a migrated database numbers its series reproducibly.
    op.execute(f"INSERT INTO usage_series ({SERIES}) SELECT DISTINCT {SERIES} FROM usage_samples ORDER BY {SERIES}")
    op.execute(
        f"""
        INSERT INTO usage_sample_rows (series_id, collected_at, source_id, email,
                                       uplink_bytes_total, downlink_bytes_total, ingested_at)
        SELECT d.series_id, u.collected_at, u.source_id, u.email, u.uplink_bytes_total, u.downlink_bytes_total, u.ingested_at
        FROM usage_samples u
        JOIN usage_series d ON {SAME_SERIES}
        """
    )
    _check_same_count(before, "usage_sample_rows")
    op.execute("DROP TABLE usage_samples CASCADE" if postgres else "DROP TABLE usage_samples")
    op.execute(VIEW)


def downgrade() -> None:
    postgres = _postgres()
    partitioned = postgres and _is_partitioned("usage_sample_rows")
    before = _count("usage_sample_rows")
    op.execute("DROP VIEW usage_samples")
    op.create_table('usage_samples',
    sa.Column('source_id', sa.String(length=256), nullable=False),
    sa.Column('node_id', sa.String(length=256), nullable=False),
    sa.Column('env', sa.String(length=256), nullable=False),
    sa.Column('uuid', sa.String(length=256), nullable=False),
    sa.Column('inbound_tag', sa.String(length=256), nullable=False),
    sa.Column('collected_at', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('email', sa.Text(), nullable=False),
    sa.Column('uplink_bytes_total', sa.BigInteger(), nullable=False),
    sa.Column('downlink_bytes_total', sa.BigInteger(), nullable=False),
    sa.Column('ingested_at', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('source_id', 'node_id', 'env', 'uuid', 'inbound_tag', 'collected_at'),
    **({'postgresql_partition_by': 'RANGE (collected_at)'} if partitioned else {})
    )
    op.create_index('ix_usage_samples_source_time', 'usage_samples', ['source_id', 'collected_at'], unique=False)
    if partitioned:
        _partition_like("usage_sample_rows", "usage_samples")
    op.execute(
        f"""
        INSERT INTO usage_samples ({SERIES}, collected_at, email, uplink_bytes_total, downlink_bytes_total, ingested_at)
        SELECT s.source_id, s.node_id, s.env, s.uuid, s.inbound_tag, r.collected_at, r.email,
               r.uplink_bytes_total, r.downlink_bytes_total, r.ingested_at
        FROM usage_sample_rows r
        JOIN usage_series s ON s.series_id = r.series_id
        """
    )
    _check_same_count(before, "usage_samples")
    op.execute("DROP TABLE usage_sample_rows CASCADE" if postgres else "DROP TABLE usage_sample_rows")
    op.drop_table('usage_series')
