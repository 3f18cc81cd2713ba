"""initial billing schema

The ledger is append-only at the database level too: triggers refuse UPDATE
and DELETE on billing_ledger, so no code path (ours or another service's)
can rewrite a charge.

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 00:12:02.633786
"""
from alembic import op
import sqlalchemy as sa
import billing_assets.storage.types


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('billing_ledger',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('node_id', sa.String(length=256), nullable=False),
    sa.Column('env', sa.String(length=256), nullable=False),
    sa.Column('uuid', sa.String(length=256), nullable=False),
    sa.Column('inbound_tag', sa.String(length=256), nullable=False),
    sa.Column('bucket_start', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('entry_seq', sa.Integer(), nullable=False),
    sa.Column('source_id', sa.String(length=256), nullable=False),
    sa.Column('email', sa.Text(), nullable=False),
    sa.Column('uplink_bytes', sa.BigInteger(), nullable=False),
    sa.Column('downlink_bytes', sa.BigInteger(), nullable=False),
    sa.Column('amount', billing_assets.storage.types.Money(precision=20, scale=9), nullable=False),
    sa.Column('amount_nanos', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=8), nullable=False),
    sa.Column('plan', sa.String(length=64), nullable=False),
    sa.Column('entry_kind', sa.String(length=16), nullable=False),
    sa.Column('created_at', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('node_id', 'env', 'uuid', 'inbound_tag', 'bucket_start', 'entry_seq', name='uq_billing_ledger_entry')
    )
    with op.batch_alter_table('billing_ledger', schema=None) as batch_op:
        batch_op.create_index('ix_billing_ledger_source_time', ['source_id', 'bucket_start'], unique=False)

    op.create_table('exporter_pages',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('source_id', sa.String(length=256), nullable=False),
    sa.Column('fetch_since', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('fetch_until', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('page_no', sa.Integer(), nullable=False),
    sa.Column('item_count', sa.Integer(), nullable=False),
    sa.Column('sample_count', sa.Integer(), nullable=False),
    sa.Column('body_bytes', sa.BigInteger(), nullable=False),
    sa.Column('emitted_at', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('received_at', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('exporter_pages', schema=None) as batch_op:
        batch_op.create_index('ix_exporter_pages_source_window', ['source_id', 'fetch_since'], unique=False)

    op.create_table('exporter_snapshot_rows',
    sa.Column('source_id', sa.String(length=256), nullable=False),
    sa.Column('node_id', sa.String(length=256), nullable=False),
    sa.Column('env', sa.String(length=256), nullable=False),
    sa.Column('uuid', sa.String(length=256), nullable=False),
    sa.Column('inbound_tag', sa.String(length=256), nullable=False),
    sa.Column('collected_at', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('email', sa.Text(), nullable=False),
    sa.Column('uplink_bytes_total', sa.BigInteger(), nullable=False),
    sa.Column('downlink_bytes_total', sa.BigInteger(), nullable=False),
    sa.Column('delivery_seq', sa.BigInteger(), nullable=False),
    sa.Column('fetched_at', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False)
    )
    with op.batch_alter_table('exporter_snapshot_rows', schema=None) as batch_op:
        batch_op.create_index('ix_exporter_snapshot_rows_source_time', ['source_id', 'collected_at'], unique=False)

    op.create_table('sample_conflicts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('source_id', sa.String(length=256), nullable=False),
    sa.Column('node_id', sa.String(length=256), nullable=False),
    sa.Column('env', sa.String(length=256), nullable=False),
    sa.Column('uuid', sa.String(length=256), nullable=False),
    sa.Column('inbound_tag', sa.String(length=256), nullable=False),
    sa.Column('collected_at', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('window_start', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('kept_uplink_bytes_total', sa.BigInteger(), nullable=False),
    sa.Column('kept_downlink_bytes_total', sa.BigInteger(), nullable=False),
    sa.Column('rejected_uplink_bytes_total', sa.BigInteger(), nullable=False),
    sa.Column('rejected_downlink_bytes_total', sa.BigInteger(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('detected_at', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('source_id', 'node_id', 'env', 'uuid', 'inbound_tag', 'collected_at', 'rejected_uplink_bytes_total', 'rejected_downlink_bytes_total', name='uq_sample_conflicts_delivery')
    )
    with op.batch_alter_table('sample_conflicts', schema=None) as batch_op:
        batch_op.create_index('ix_sample_conflicts_source_time', ['source_id', 'collected_at'], unique=False)

    op.create_table('source_checkpoints',
    sa.Column('source_id', sa.String(length=256), nullable=False),
    sa.Column('last_successful_until', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_cursor', sa.Text(), nullable=True),
    sa.Column('last_attempted_at', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_succeeded_at', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('consecutive_failures', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('source_id')
    )
    op.create_table('usage_minute_buckets',
    sa.Column('node_id', sa.String(length=256), nullable=False),
    sa.Column('env', sa.String(length=256), nullable=False),
    sa.Column('uuid', sa.String(length=256), nullable=False),
    sa.Column('inbound_tag', sa.String(length=256), nullable=False),
    sa.Column('bucket_start', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('source_id', sa.String(length=256), nullable=False),
    sa.Column('email', sa.Text(), nullable=False),
    sa.Column('uplink_bytes', sa.BigInteger(), nullable=False),
    sa.Column('downlink_bytes', sa.BigInteger(), nullable=False),
    sa.Column('sample_count', sa.Integer(), nullable=False),
    sa.Column('updated_at', billing_assets.storage.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('node_id', 'env', 'uuid', 'inbound_tag', 'bucket_start')
    )
    with op.batch_alter_table('usage_minute_buckets', schema=None) as batch_op:
        batch_op.create_index('ix_usage_minute_buckets_source_time', ['source_id', 'bucket_start'], unique=False)

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
    sa.PrimaryKeyConstraint('source_id', 'node_id', 'env', 'uuid', 'inbound_tag', 'collected_at')
    )
    with op.batch_alter_table('usage_samples', schema=None) as batch_op:
        batch_op.create_index('ix_usage_samples_source_time', ['source_id', 'collected_at'], unique=False)


    _forbid_ledger_rewrites()


def downgrade() -> None:
    with op.batch_alter_table('usage_samples', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_samples_source_time')

    op.drop_table('usage_samples')
    with op.batch_alter_table('usage_minute_buckets', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_minute_buckets_source_time')

    op.drop_table('usage_minute_buckets')
    op.drop_table('source_checkpoints')
    with op.batch_alter_table('sample_conflicts', schema=None) as batch_op:
        batch_op.drop_index('ix_sample_conflicts_source_time')

    op.drop_table('sample_conflicts')
    with op.batch_alter_table('exporter_snapshot_rows', schema=None) as batch_op:
        batch_op.drop_index('ix_exporter_snapshot_rows_source_time')

    op.drop_table('exporter_snapshot_rows')
    with op.batch_alter_table('exporter_pages', schema=None) as batch_op:
        batch_op.drop_index('ix_exporter_pages_source_window')

    op.drop_table('exporter_pages')
    with op.batch_alter_table('billing_ledger', schema=None) as batch_op:
        batch_op.drop_index('ix_billing_ledger_source_time')

    op.drop_table('billing_ledger')
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS billing_ledger_append_only()")


def _forbid_ledger_rewrites() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION billing_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'billing_ledger is append-only'; END $$"
        )
        op.execute(
            "CREATE TRIGGER billing_ledger_append_only BEFORE UPDATE OR DELETE ON billing_ledger "
            "FOR EACH ROW EXECUTE FUNCTION billing_ledger_append_only()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER billing_ledger_no_{verb.lower()} BEFORE {verb} ON billing_ledger "
                "BEGIN SELECT RAISE(ABORT, 'billing_ledger is append-only'); END"
            )
