"""usage quarantine: deltas above the plausibility bound, held until released

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 00:00:00
"""
from alembic import op
import sqlalchemy as sa
import billing_assets.storage.types


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('usage_quarantine',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('source_id', sa.String(length=256), nullable=False),
    sa.Column('node_id', sa.String(length=256), nullable=False),
    sa.Column('env', sa.String(length=256), nullable=False),
    sa.Column('uuid', sa.String(length=256), nullable=False),
    sa.Column('inbound_tag', sa.String(length=256), nullable=False),
    sa.Column('collected_at', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('held_uplink_bytes', sa.BigInteger(), nullable=False),
    sa.Column('held_downlink_bytes', sa.BigInteger(), nullable=False),
    sa.Column('elapsed_us', sa.BigInteger(), nullable=True),
    sa.Column('bound_bytes', sa.BigInteger(), nullable=False),
    sa.Column('detected_at', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('released_at', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('released_by', sa.Text(), nullable=True),
    sa.Column('release_reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('source_id', 'node_id', 'env', 'uuid', 'inbound_tag', 'collected_at', 'held_uplink_bytes', 'held_downlink_bytes', name='uq_usage_quarantine_hold')
    )
    with op.batch_alter_table('usage_quarantine', schema=None) as batch_op:
        batch_op.create_index('ix_usage_quarantine_source_time', ['source_id', 'collected_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('usage_quarantine', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_quarantine_source_time')
    op.drop_table('usage_quarantine')
