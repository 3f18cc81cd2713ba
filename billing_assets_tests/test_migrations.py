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


def test_upgrade_to_the_series_dictionary_keeps_every_sample_and_bills_nothing_twice(
    billing_env, recent_hour, request, tmp_path, monkeypatch
):
    """Migration 0011 on a database holding what the pipeline wrote under today's schema (0010).

    The rows are the pipeline's own: a run on a second database at head writes
    them, they are copied into the 0010 tables as the old dedup stored them
    (plus an odd sample: another source, 10 days old), and the upgrade must
    give back exactly the same contract rows. Then the migrated database is
    used: a replay of the same windows adds no sample, bucket or ledger entry,
    and the next windows (whose first buckets take their baselines from
    migrated samples) bill exactly what the reference database bills.
    """
    from datetime import timedelta

    from alembic import command
    from sqlalchemy import select, text

    from billing_assets.defs.runs import materialize_range
    from billing_assets.definitions import defs
    from billing_assets.storage.engine import alembic_config, reset_caches
    from billing_assets.storage.schema import (
        billing_ledger, sample_conflicts, source_checkpoints, usage_minute_buckets, usage_samples,
    )
    from billing_assets_tests.support.db import buckets_by_key, insert_samples, ledger_sums, nonzero
    from billing_assets_tests.support.oracle import exporter_samples, expected_buckets, within

    postgres = billing_env.database_url.startswith("postgresql")
    start, middle, end = recent_hour, recent_hour + timedelta(minutes=12), recent_hour + timedelta(minutes=20)
    exporter = billing_env.fleet.start("mg-1", billing_start=start, users=6)
    billing_env.write_registry()
    billing_env.sync_partitions()
    instance = billing_env.instance()
    reference = billing_env.engine
    assert materialize_range(defs, instance, "mg-1", start, middle, log_level="CRITICAL").success
    odd = [
        dict(source_id="mg-old", node_id="n-old", env="e", uuid="u" * 200, inbound_tag="t", collected_at=at,
             email="old@example.test", uplink_bytes_total=i, downlink_bytes_total=2 * i, ingested_at=at)
        for i, at in enumerate((start - timedelta(days=10), start - timedelta(days=1), start), 1)
    ]  # fmt: skip
    with reference.begin() as connection:
        insert_samples(connection, odd)

    copied = (usage_samples, usage_minute_buckets, billing_ledger, source_checkpoints, sample_conflicts)

    def contents(engine, leave_out: tuple[str, ...] = ("id",)) -> dict[str, list[tuple]]:
        """Every contract row, without surrogate ids (the ledger's order is kept by the ids)."""
        found = {}
        with engine.connect() as connection:
            for table in copied:
                columns = [c for c in table.columns if c.name not in leave_out]
                order = [table.c.id] if "id" in table.c else columns
                found[table.name] = [tuple(row) for row in connection.execute(select(*columns).order_by(*order))]
        return found

    def billed(found: dict) -> dict:
        """What a run may not change on a replay (checkpoints record each run's wall-clock time)."""
        return {name: rows for name, rows in found.items() if name != "source_checkpoints"}

    before = contents(reference)
    assert len(before["usage_samples"]) > 6 * 12 * 4 and len(before["billing_ledger"]) > 50

    old_url = request.getfixturevalue("postgres_server").create_database() if postgres else f"sqlite:///{tmp_path / 'old.sqlite'}"
    old = get_engine(old_url)
    with old.begin() as connection:
        command.upgrade(alembic_config(connection), "0010")
    with old.begin() as connection:
        for table in copied:
            rows = [dict(zip([c.name for c in table.columns if c.name != "id"], row)) for row in before[table.name]]
            if rows:
                connection.execute(table.insert(), rows)  # usage_samples is still a table at 0010
    if postgres:
        with old.connect() as connection:
            old_days = {name.removeprefix("usage_samples_") for name in connection.execute(text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'usage_samples'")).scalars()}
        assert "default" in old_days and len(old_days) >= 4

    with old.begin() as connection:
        command.upgrade(alembic_config(connection), "head")
    assert contents(old) == before, "the upgrade lost, duplicated or changed a row"
    with old.connect() as connection:
        series = connection.execute(text("SELECT COUNT(*) FROM usage_series")).scalar_one()
        distinct = connection.execute(text(
            "SELECT COUNT(*) FROM (SELECT DISTINCT source_id, node_id, env, uuid, inbound_tag FROM usage_samples) s")).scalar_one()
        assert series == distinct > 6, "one id per series, every series of the samples"
        assert connection.execute(text("SELECT COUNT(*) FROM usage_sample_rows")).scalar_one() == len(before["usage_samples"])
        if postgres:
            assert connection.execute(text("SELECT relkind FROM pg_class WHERE relname = 'usage_samples'")).scalar() == "v"
            homes = {name.removeprefix("usage_sample_rows_") for name in connection.execute(text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'usage_sample_rows'")).scalars()}
            assert homes == old_days, "the same day partitions, so pruning drops the same days"
            oldest = connection.execute(text(
                "SELECT r.tableoid::regclass::text FROM usage_sample_rows r JOIN usage_series s ON s.series_id = r.series_id "
                "WHERE s.source_id = 'mg-old' ORDER BY r.collected_at LIMIT 1"
            )).scalar_one()
            assert oldest == "usage_sample_rows_default"

    # The migrated database in use: a replay of the same windows bills nothing twice.
    monkeypatch.setenv("BILLING_DATABASE_URL", old_url)
    reset_caches()
    old = get_engine(old_url)
    assert materialize_range(defs, instance, "mg-1", start, middle, log_level="CRITICAL").success
    assert billed(contents(old)) == billed(before), "a replay after the upgrade added or changed a sample, bucket or ledger entry"

    # The next windows take their baselines from migrated samples: the same bill as the reference's.
    assert materialize_range(defs, instance, "mg-1", middle, end, log_level="CRITICAL").success
    monkeypatch.setenv("BILLING_DATABASE_URL", billing_env.database_url)
    reset_caches()
    assert materialize_range(defs, instance, "mg-1", middle, end, log_level="CRITICAL").success
    reference, old = get_engine(billing_env.database_url), get_engine(old_url)
    after = contents(old)
    # Runs on two databases differ only in when and by which run they wrote (and in the
    # order a step's ledger entries got their ids).
    facts = ("id", "ingested_at", "updated_at", "created_at", "run_id", "detected_at")

    def as_sets(found: dict) -> dict:
        return {name: sorted(rows) for name, rows in billed(found).items()}

    assert as_sets(contents(old, facts)) == as_sets(contents(reference, facts))
    shape = exporter.server.shape
    oracle = within(expected_buckets(exporter_samples(shape.model, shape.node_id, shape.env, start - timedelta(hours=1), end), start), start, end)
    assert nonzero(buckets_by_key(old, "mg-1")) == nonzero(oracle)
    assert ledger_sums(old, "mg-1") == nonzero(buckets_by_key(old, "mg-1"))

    # And back: the downgrade restores the table with every row.
    with old.begin() as connection:
        command.downgrade(alembic_config(connection), "0010")
    assert contents(old)["usage_samples"] == after["usage_samples"]
    with old.begin() as connection:
        command.upgrade(alembic_config(connection), "head")
    assert contents(old) == after


def test_a_fetch_staged_before_pages_were_kept_is_billed_once_after_the_upgrade(billing_env, recent_hour, request, tmp_path, monkeypatch):
    """Migration 0012 between a fetch and its dedup: the staged rows still bill, exactly once.

    Before 0012 a fetch staged one row per sample and kept no body. Such a
    fetch, not yet deduplicated, is written into a 0011 database as the old
    fetch wrote it; after the upgrade, dedup must read those staged rows (no
    kept page covers the range) and bill them; a later run over a wider range
    (fetching with bodies now) must bill the rest and nothing twice; and a
    downgrade and upgrade lose no stored sample.
    """
    from datetime import timedelta

    from alembic import command
    from sqlalchemy import func, select

    from billing_assets.core.pricing import DEFAULT_PRICING
    from billing_assets.definitions import defs
    from billing_assets.defs.runs import materialize_range
    from billing_assets.pipeline.bucket import bucket_slice
    from billing_assets.pipeline.charge import charge_slice
    from billing_assets.pipeline.dedup import dedup_slice
    from billing_assets.pipeline.slices import Slice
    from billing_assets.registry.model import load_registry
    from billing_assets.storage import snapshots
    from billing_assets.storage.engine import alembic_config, reset_caches
    from billing_assets.storage.schema import billing_ledger, usage_samples
    from billing_assets.storage.times import time_param
    from billing_assets.transport.client import ExporterClient
    from billing_assets_tests.support.db import buckets_by_key, ledger_sums, nonzero
    from billing_assets_tests.support.oracle import exporter_samples, expected_buckets, within

    postgres = billing_env.database_url.startswith("postgresql")
    start, middle, end = recent_hour, recent_hour + timedelta(minutes=10), recent_hour + timedelta(minutes=16)
    exporter = billing_env.fleet.start("mk-1", billing_start=start, users=5, page_limit=3)
    billing_env.write_registry()
    billing_env.sync_partitions()
    source = load_registry(billing_env.sources_file).get("mk-1")
    url = request.getfixturevalue("postgres_server").create_database() if postgres else f"sqlite:///{tmp_path / 'k.sqlite'}"
    engine = get_engine(url)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0011")

    # The old fetch of [start - overlap, middle): one staged row per sample, pages without a body.
    since = start - source.overlap
    with ExporterClient(source) as client, engine.begin() as connection:
        stamp, seq, staged = time_param(connection), 0, 0
        for fetched in client.iter_window(since, middle):
            page, rows = fetched.page, []
            for item in page.items:
                for sample in item.samples:
                    rows.append((source.source_id, page.node_id, page.env, sample["uuid"], sample["inbound_tag"],
                                 stamp(item.collected_at), sample["email"], sample["uplink_bytes_total"],
                                 sample["downlink_bytes_total"], seq, stamp(start)))  # fmt: skip
                    seq += 1
            staged += snapshots.stage_rows(connection, rows)
            connection.exec_driver_sql(
                "INSERT INTO exporter_pages (source_id, fetch_since, fetch_until, page_no, item_count, sample_count, "
                "body_bytes, emitted_at, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)".replace("?", "%s" if postgres else "?"),
                (source.source_id, stamp(since), stamp(middle), fetched.page_no, len(page.items), len(rows),
                 fetched.body_bytes, stamp(page.emitted_at), stamp(start)),
            )  # fmt: skip
    assert staged > 5 * 10 * 4

    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "head")
    work = Slice("mk-1", start, middle)
    stats = dedup_slice(engine, source, work)
    assert stats.staged == staged and stats.inserted == staged, "every staged delivery is read once and stored"
    bucket_slice(engine, source, work)
    charge_slice(engine, source, work, DEFAULT_PRICING)
    shape = exporter.server.shape
    truth = expected_buckets(exporter_samples(shape.model, shape.node_id, shape.env, start - timedelta(hours=1), end), start)
    assert nonzero(buckets_by_key(engine, "mk-1")) == nonzero(within(truth, start, middle))

    # The pipeline at head over the whole range: fetches with bodies, bills the rest, nothing twice.
    monkeypatch.setenv("BILLING_DATABASE_URL", url)
    reset_caches()
    engine = get_engine(url)
    assert materialize_range(defs, billing_env.instance(), "mk-1", start, end, log_level="CRITICAL").success
    assert nonzero(buckets_by_key(engine, "mk-1")) == nonzero(within(truth, start, end))
    assert ledger_sums(engine, "mk-1") == nonzero(buckets_by_key(engine, "mk-1"))

    def counts() -> tuple[int, int]:
        with engine.connect() as connection:
            return tuple(connection.execute(select(func.count()).select_from(t)).scalar_one() for t in (usage_samples, billing_ledger))

    kept = counts()
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0011")
    assert counts() == kept
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "head")
    assert counts() == kept
    monkeypatch.setenv("BILLING_DATABASE_URL", billing_env.database_url)
    reset_caches()
