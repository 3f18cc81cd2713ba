"""downstream: hourly usage, completeness, remittances and their bookkeeping

One self-contained migration for everything the remittance stage stores, so
it can be re-chained onto whatever head the main branch has when merged.

Revision ID: 0010
Revises: 0005
Create Date: 2026-12-01 07:45:00
"""
from alembic import op
import sqlalchemy as sa

from billing_assets.storage.types import UTCDateTime

revision = '0010'
down_revision = '0005'
branch_labels = None
depends_on = None

ID = sa.String(length=256)
METRIC = sa.String(length=32)
SERIAL = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    # Not batch mode: on SQLite a batch "recreate" would drop the ledger's append-only triggers.
    op.create_index('ix_billing_ledger_created', 'billing_ledger', ['created_at', 'bucket_start'], unique=False)

    op.create_table('hourly_usage',
        sa.Column('account_id', ID, nullable=False),
        sa.Column('metric', METRIC, nullable=False),
        sa.Column('hour', UTCDateTime(), nullable=False),
        sa.Column('quantity', sa.BigInteger(), nullable=False),
        sa.Column('updated_at', UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('account_id', 'metric', 'hour'),
    )
    op.create_index('ix_hourly_usage_hour', 'hourly_usage', ['hour'], unique=False)

    op.create_table('unassigned_usage',
        sa.Column('uuid', ID, nullable=False),
        sa.Column('metric', METRIC, nullable=False),
        sa.Column('hour', UTCDateTime(), nullable=False),
        sa.Column('quantity', sa.BigInteger(), nullable=False),
        sa.Column('updated_at', UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('uuid', 'metric', 'hour'),
    )
    op.create_index('ix_unassigned_usage_hour', 'unassigned_usage', ['hour'], unique=False)

    op.create_table('hour_completeness',
        sa.Column('hour', UTCDateTime(), nullable=False),
        sa.Column('complete', sa.Boolean(), nullable=False),
        sa.Column('forced', sa.Boolean(), nullable=False),
        sa.Column('forced_by', sa.Text(), nullable=True),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.Column('evaluated_at', UTCDateTime(), nullable=False),
        sa.Column('derived_at', UTCDateTime(), nullable=True),
        sa.Column('remitted_at', UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint('hour'),
    )

    op.create_table('remittances',
        sa.Column('id', SERIAL, autoincrement=True, nullable=False),
        sa.Column('target', ID, nullable=False),
        sa.Column('account_id', ID, nullable=False),
        sa.Column('subscription_key', sa.Text(), nullable=False),
        sa.Column('metric', METRIC, nullable=False),
        sa.Column('hour', UTCDateTime(), nullable=False),
        sa.Column('revision', sa.Integer(), nullable=False),
        sa.Column('quantity', sa.BigInteger(), nullable=False),
        sa.Column('tracking_id', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', UTCDateTime(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('sent_at', UTCDateTime(), nullable=True),
        sa.Column('claimed_by', sa.String(length=64), nullable=True),
        sa.Column('claimed_until', UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('target', 'account_id', 'metric', 'hour', 'revision', name='uq_remittances_key'),
        sa.UniqueConstraint('target', 'tracking_id', name='uq_remittances_tracking_id'),
    )
    op.create_index('ix_remittances_claim', 'remittances', ['target', 'status', 'hour', 'revision', 'id'], unique=False)
    op.create_index('ix_remittances_retry', 'remittances', ['status', 'next_attempt_at'], unique=False)
    op.create_index('ix_remittances_hour', 'remittances', ['hour'], unique=False)

    op.create_table('remittance_attempts',
        sa.Column('id', SERIAL, autoincrement=True, nullable=False),
        sa.Column('remittance_id', sa.BigInteger(), nullable=False),
        sa.Column('attempted_at', UTCDateTime(), nullable=False),
        sa.Column('outcome', sa.String(length=16), nullable=False),
        sa.Column('http_status', sa.Integer(), nullable=True),
        sa.Column('detail', sa.Text(), nullable=True),
        sa.Column('run_id', sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_remittance_attempts_remittance', 'remittance_attempts', ['remittance_id'], unique=False)

    op.create_table('remittance_files',
        sa.Column('id', SERIAL, autoincrement=True, nullable=False),
        sa.Column('target', ID, nullable=False),
        sa.Column('file_name', sa.String(length=255), nullable=False),
        sa.Column('line', sa.Integer(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=True),
        sa.Column('remittance_id', sa.BigInteger(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('written_at', UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('target', 'file_name', 'line', name='uq_remittance_files_line'),
    )
    op.create_index('ix_remittance_files_remittance', 'remittance_files', ['remittance_id'], unique=False)

    op.create_table('remittance_plan',
        sa.Column('target', ID, nullable=False),
        sa.Column('account_id', ID, nullable=False),
        sa.Column('metric', METRIC, nullable=False),
        sa.Column('hour', UTCDateTime(), nullable=False),
        sa.Column('accounted', sa.BigInteger(), nullable=False),
        sa.Column('planned_at', UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('target', 'account_id', 'metric', 'hour'),
    )
    op.create_index('ix_remittance_plan_hour', 'remittance_plan', ['hour'], unique=False)

    op.create_table('remittance_carry',
        sa.Column('target', ID, nullable=False),
        sa.Column('account_id', ID, nullable=False),
        sa.Column('metric', METRIC, nullable=False),
        sa.Column('carried', sa.BigInteger(), nullable=False),
        sa.Column('updated_at', UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('target', 'account_id', 'metric'),
    )


def downgrade() -> None:
    for table in ('remittance_carry', 'remittance_plan', 'remittance_files', 'remittance_attempts', 'remittances',
                  'hour_completeness', 'unassigned_usage', 'hourly_usage'):
        op.drop_table(table)
    op.drop_index('ix_billing_ledger_created', table_name='billing_ledger')
