"""pages kept as received: each page's body (compressed) on `exporter_pages`

Issue 14. Fetch staged one `exporter_snapshot_rows` row per sample (~330 k
rows per source-hour, COPY'd in and read back out by dedup), which was a
third of fetch and the input sort of dedup. Now a fetch stores each page
body exactly as received, zstd-compressed, with its sha256 and the request
that produced it (`fetch_id` groups a fetch's pages; `request_cursor` is the
cursor sent, NULL for the first page; the window is `fetch_since`/
`fetch_until` as before), and dedup parses the bodies it needs.

Nothing existing is moved or rewritten: older pages keep a NULL body, and
what they delivered is still in `exporter_snapshot_rows`, which dedup reads
for every instant no kept page covers (as it does for `legacy_latest` pulls).
So a fetch staged before the upgrade and deduplicated after it bills exactly
once, and a downgrade only drops the new columns (deliveries fetched after
the upgrade are then only in the stored samples and the bodies are gone;
re-fetch to stage them again).

On PostgreSQL the body column is `STORAGE EXTERNAL`: it is compressed
already, so TOAST should not try again.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 00:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("exporter_pages") as batch:
        batch.add_column(sa.Column("fetch_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("request_cursor", sa.Text(), nullable=True))
        batch.add_column(sa.Column("body_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("body_encoding", sa.String(16), nullable=True))
        batch.add_column(sa.Column("body", sa.LargeBinary(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE exporter_pages ALTER COLUMN body SET STORAGE EXTERNAL")
    # Dedup's question "which fetches reach into [since, until)" is a range scan from `since` up.
    op.create_index("ix_exporter_pages_source_until", "exporter_pages", ["source_id", "fetch_until"])


def downgrade() -> None:
    op.drop_index("ix_exporter_pages_source_until", table_name="exporter_pages")
    with op.batch_alter_table("exporter_pages") as batch:
        for column in ("body", "body_encoding", "body_sha256", "request_cursor", "fetch_id"):
            batch.drop_column(column)
