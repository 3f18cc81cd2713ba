"""staging rows unlogged on PostgreSQL (replaceable by re-fetch)

`exporter_snapshot_rows` only holds what the last fetch of a range delivered,
until dedup has read it; a crash that loses it costs one re-fetch, never a
billed byte (usage_samples, buckets and the ledger stay logged). Not writing
it to the WAL removes a full extra copy of every delivered sample.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 00:00:00
"""
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE exporter_snapshot_rows SET UNLOGGED")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE exporter_snapshot_rows SET LOGGED")
