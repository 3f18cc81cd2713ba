"""The schema is created by migrations, and the models say exactly what they create.

A model edited without a migration (or the reverse) would make SQLite and
PostgreSQL drift from each other and from the read contract other services use.
"""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from billing_assets.storage.engine import get_engine, migrate
from billing_assets.storage.pruning import include_name
from billing_assets.storage.schema import metadata


def test_migrations_produce_exactly_the_models(database_url):
    engine = migrate(get_engine(database_url))
    with engine.connect() as connection:
        # Day/DEFAULT partitions of the pruned tables (PostgreSQL) are the pruning's, not the models'.
        context = MigrationContext.configure(connection, opts={"compare_type": True, "include_name": include_name})
        assert compare_metadata(context, metadata) == []
        assert context.get_current_revision() is not None


def test_migrating_twice_is_a_no_op(database_url):
    engine = migrate(get_engine(database_url))
    from billing_assets.storage import engine as engine_module

    engine_module._migrated.clear()
    migrate(engine)
    with engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() is not None


def test_the_database_refuses_to_edit_or_delete_ledger_entries(database_url):
    from datetime import datetime, timezone
    from decimal import Decimal

    import pytest
    from sqlalchemy import delete, func, select, update
    from sqlalchemy.exc import DBAPIError

    from billing_assets.storage.schema import billing_ledger

    engine = migrate(get_engine(database_url))
    entry = dict(
        node_id="n", env="e", uuid="u", inbound_tag="t", bucket_start=datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc),
        entry_seq=1, source_id="s", email="x@example.test", uplink_bytes=10, downlink_bytes=20,
        amount=Decimal("0.000000001"), amount_nanos=1, currency="USD", plan="standard", entry_kind="charge",
        created_at=datetime.now(timezone.utc), run_id=None,
    )
    with engine.begin() as connection:
        connection.execute(billing_ledger.insert(), [entry])
    for statement in (update(billing_ledger).values(uplink_bytes=0), delete(billing_ledger)):
        with pytest.raises(DBAPIError, match="append-only"):
            with engine.begin() as connection:
                connection.execute(statement)
    with engine.connect() as connection:
        assert connection.execute(select(func.sum(billing_ledger.c.uplink_bytes))).scalar_one() == 10
