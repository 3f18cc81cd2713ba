"""The schema is created by migrations, and the models say exactly what they create.

A model edited without a migration (or the reverse) would make SQLite and
PostgreSQL drift from each other and from the read contract other services use.
"""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from billing_assets.storage.engine import get_engine, migrate
from billing_assets.storage.schema import metadata


def test_migrations_produce_exactly_the_models(database_url):
    engine = migrate(get_engine(database_url))
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
        assert context.get_current_revision() is not None


def test_migrating_twice_is_a_no_op(database_url):
    engine = migrate(get_engine(database_url))
    from billing_assets.storage import engine as engine_module

    engine_module._migrated.clear()
    migrate(engine)
    with engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() is not None
