"""legacy snapshot samples (dual-read comparison, never billed)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 00:00:00
"""
from alembic import op
import sqlalchemy as sa
import billing_assets.storage.types


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('legacy_snapshot_samples',
    sa.Column('source_id', sa.String(length=256), nullable=False),
    sa.Column('node_id', sa.String(length=256), nullable=False),
    sa.Column('env', sa.String(length=256), nullable=False),
    sa.Column('uuid', sa.String(length=256), nullable=False),
    sa.Column('inbound_tag', sa.String(length=256), nullable=False),
    sa.Column('collected_at', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('email', sa.Text(), nullable=False),
    sa.Column('uplink_bytes_total', sa.BigInteger(), nullable=False),
    sa.Column('downlink_bytes_total', sa.BigInteger(), nullable=False),
    sa.Column('pulled_at', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('source_id', 'node_id', 'env', 'uuid', 'inbound_tag', 'collected_at')
    )
    with op.batch_alter_table('legacy_snapshot_samples', schema=None) as batch_op:
        batch_op.create_index('ix_legacy_snapshot_samples_source_time', ['source_id', 'collected_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('legacy_snapshot_samples', schema=None) as batch_op:
        batch_op.drop_index('ix_legacy_snapshot_samples_source_time')

    op.drop_table('legacy_snapshot_samples')
