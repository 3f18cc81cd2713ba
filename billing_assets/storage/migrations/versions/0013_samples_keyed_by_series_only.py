"""samples keyed by series only: `usage_sample_rows` loses `source_id` and its range index

Issue 14. Every sample row carried its series' `source_id` (a copy of the
dictionary's) for one index, `(source_id, collected_at)`, that answered the
per-source range reads. Keeping that index up to date was ~0.45 s of the
~1.1 s PostgreSQL spent taking in a source-hour of samples (bench/RESULTS.md,
round 12). The reads now name the source's series instead, from the
dictionary, and descend the primary key (series_id, collected_at) once per
series (`storage/source_series.py`). The `usage_samples` view, the read
contract, still has `source_id`: it always took it from `usage_series`.

Nothing is moved: the column and its index are dropped (on PostgreSQL a
catalog change, instant at any size). The view is dropped and recreated around
it because SQLite rebuilds the table. A downgrade adds the column back, fills
it from the dictionary and rebuilds the index.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 00:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

# The contract view, unchanged from 0011.
VIEW = """
    CREATE VIEW usage_samples AS
    SELECT s.source_id, s.node_id, s.env, s.uuid, s.inbound_tag, r.collected_at, r.email,
           r.uplink_bytes_total, r.downlink_bytes_total, r.ingested_at
    FROM usage_sample_rows r
    JOIN usage_series s ON s.series_id = r.series_id
"""


def upgrade() -> None:
    op.execute("DROP VIEW usage_samples")
    op.drop_index("ix_usage_sample_rows_source_time", table_name="usage_sample_rows")
    with op.batch_alter_table("usage_sample_rows") as batch:
        batch.drop_column("source_id")
    op.execute(VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW usage_samples")
    with op.batch_alter_table("usage_sample_rows") as batch:
        batch.add_column(sa.Column("source_id", sa.String(length=256), nullable=True))
    op.execute(
        "UPDATE usage_sample_rows SET source_id = "
        "(SELECT d.source_id FROM usage_series d WHERE d.series_id = usage_sample_rows.series_id)"
    )
    with op.batch_alter_table("usage_sample_rows") as batch:
        batch.alter_column("source_id", existing_type=sa.String(length=256), nullable=False)
    op.create_index("ix_usage_sample_rows_source_time", "usage_sample_rows", ["source_id", "collected_at"])
    op.execute(VIEW)
