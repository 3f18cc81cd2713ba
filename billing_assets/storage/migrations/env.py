"""Alembic environment: runs against the connection the caller hands in."""

from alembic import context

from billing_assets.storage.pruning import include_name
from billing_assets.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    from sqlalchemy import create_engine

    from billing_assets.storage.engine import database_url

    connection = create_engine(database_url()).connect()

context.configure(
    connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True, include_name=include_name
)
with context.begin_transaction():
    context.run_migrations()
