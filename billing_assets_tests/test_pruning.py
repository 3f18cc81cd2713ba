"""Pruning past the dedup horizon forgets old rows and never changes a bill.

Real runs against a real HTTPS exporter (counters that never reset, so a lost
baseline would show as a first sample counted in full), on SQLite (batched
deletes) and PostgreSQL (day partitions dropped whole, checked in pg_inherits).
The horizon is shortened to 2 days after billing so that days-old windows are
past it, as they would be a month later in production.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest
from alembic import command
from sqlalchemy import func, select, text

from billing_assets.defs.runs import materialize_range
from billing_assets.core.timeutil import floor_minute, now_utc
from billing_assets.definitions import defs
from billing_assets.storage import pruning
from billing_assets.storage.engine import alembic_config, get_engine
from billing_assets.storage.pruning import DAY, ensure_partitions, floor_day, prune, prune_cutoff
from billing_assets.storage.schema import exporter_pages, exporter_snapshot_rows, legacy_snapshot_samples, usage_samples
from billing_assets_tests.support.db import buckets_by_key, ledger_rows

SOURCE = "pr-1"
SERIES = ("source_id", "node_id", "env", "uuid", "inbound_tag")


def _count(engine, table, before=None, since=None, column="collected_at") -> int:
    query = select(func.count()).select_from(table)
    if before is not None:
        query = query.where(table.c[column] < before)
    if since is not None:
        query = query.where(table.c[column] >= since)
    with engine.connect() as connection:
        return connection.execute(query).scalar_one()


def _latest_before(engine, before) -> dict[tuple, datetime]:
    columns = [usage_samples.c[name] for name in SERIES]
    query = select(*columns, func.max(usage_samples.c.collected_at)).where(usage_samples.c.collected_at < before).group_by(*columns)
    with engine.connect() as connection:
        return {tuple(row[:-1]): row[-1] for row in connection.execute(query)}


def _children(engine, table) -> set[str]:
    with engine.connect() as connection:
        return set(connection.execute(text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :t"), {"t": table}).scalars())


def _held(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(text("SELECT COUNT(*) FROM usage_quarantine")).scalar_one()


def _run(env, start, minutes, **kwargs):
    return materialize_range(defs, env.instance(), SOURCE, start, start + timedelta(minutes=minutes), log_level="CRITICAL", **kwargs)


def test_pruning_keeps_billing_exact_and_replays_dedup(billing_env, monkeypatch):
    now = now_utc()
    postgres = billing_env.database_url.startswith("postgresql")
    old2 = floor_day(now - 5 * DAY) + timedelta(hours=12)  # PostgreSQL: no day partition, lands in DEFAULT
    old = floor_day(now - 4 * DAY) + timedelta(hours=12)  # PostgreSQL: its own day partition
    inside = floor_minute(now - timedelta(hours=40))  # inside a 2-day horizon; nothing fetched between it and `old`
    # No fetch overlap: the first bucket of `inside` then takes its baseline from `old`, 40 hours
    # earlier and past the cutoff, instead of from an overlap sample fetched with it.
    billing_env.fleet.start(SOURCE, billing_start=now - 6 * DAY, users=3, restart_every_s=None, overlap="0s")
    billing_env.write_registry()
    billing_env.sync_partitions()
    engine = billing_env.engine
    if postgres:
        ensure_partitions(engine, floor_day(old), floor_day(old))
        assert f"usage_sample_rows_p{old:%Y%m%d}" in _children(engine, "usage_sample_rows")
    for start, minutes in ((old2, 5), (old, 10), (inside, 10)):
        assert _run(billing_env, start, minutes).success
    with engine.begin() as connection:
        # Window fetches keep pages, not rows: staged rows are what a legacy_latest pull (or a
        # fetch from before migration 0012) leaves, on the same days, of another source.
        connection.execute(exporter_snapshot_rows.insert(), [
            dict(source_id="staged", node_id="n", env="e", uuid="u", inbound_tag="t", collected_at=at, email="x@example.test",
                 uplink_bytes_total=i, downlink_bytes_total=i, delivery_seq=i, fetched_at=at)
            for i, at in enumerate((old2, old, now - timedelta(hours=1)))
        ])
        connection.execute(legacy_snapshot_samples.insert(), [
            dict(source_id=SOURCE, node_id="n", env="e", uuid="u", inbound_tag="t", collected_at=at, email="x@example.test",
                 uplink_bytes_total=1, downlink_bytes_total=2, pulled_at=at)
            for at in (old, now - timedelta(hours=1))
        ])

    cutoff = prune_cutoff(now, timedelta(days=2))
    assert cutoff == floor_day(now - 3 * DAY) and old + timedelta(minutes=10) < cutoff <= inside
    ledger, buckets = ledger_rows(engine), buckets_by_key(engine, SOURCE)
    assert {row["entry_kind"] for row in ledger} == {"charge"} and len(buckets) > 50
    kept = {t: _count(engine, t, since=cutoff) for t in (exporter_snapshot_rows, usage_samples, legacy_snapshot_samples)}
    kept_pages = _count(engine, exporter_pages, since=cutoff, column="fetch_since")
    baselines = _latest_before(engine, cutoff)
    assert _count(engine, usage_samples, before=cutoff) > 10 * len(baselines) > 0
    assert _count(engine, exporter_snapshot_rows, before=cutoff) > 0 and _count(engine, exporter_pages, before=cutoff, column="fetch_since") > 0

    monkeypatch.setenv("BILLING_DEDUP_HORIZON", "2d")
    report = prune(engine, timedelta(days=2), now, batch_rows=40)

    # Everything before the cutoff is gone, except one baseline sample per series; nothing after it moved.
    assert _count(engine, exporter_snapshot_rows, before=cutoff) == 0
    assert _count(engine, exporter_pages, before=cutoff, column="fetch_since") == 0
    assert _count(engine, legacy_snapshot_samples, before=cutoff) == 0
    assert _latest_before(engine, cutoff) == baselines
    assert _count(engine, usage_samples, before=cutoff) == len(baselines)
    assert {t: _count(engine, t, since=cutoff) for t in kept} == kept
    assert _count(engine, exporter_pages, since=cutoff, column="fetch_since") == kept_pages
    assert report.rows_deleted["usage_sample_rows"] > 0 or postgres
    if postgres:
        for table in pruning.PRUNED_TABLES:
            children = _children(engine, table)
            assert f"{table}_p{old:%Y%m%d}" not in children, f"{table}: expired day partition still attached"
            assert f"{table}_p{now:%Y%m%d}" in children and f"{table}_default" in children
            assert f"{table}_p{now + 7 * DAY:%Y%m%d}" in children, "partitions are kept ready a week ahead"
        assert f"usage_sample_rows_p{old:%Y%m%d}" in report.partitions_dropped
        assert report.baselines_kept == len(baselines)
        # the DEFAULT partition's stragglers (the day with no partition) went by batched delete
        assert report.rows_deleted["usage_sample_rows"] > 0 and report.rows_deleted["exporter_snapshot_rows"] > 0
    else:
        assert report.batches > len(pruning.PRUNED_TABLES), "SQLite deletes in bounded batches"

    # A replay inside the horizon dedups against what is left: no new sample, no ledger entry, same buckets,
    # and nothing held as implausible (these counters run from the epoch: a first sample counted in full,
    # for want of its baseline, would be a huge delta that the plausibility bound holds instead of billing).
    samples, held = _count(engine, usage_samples), _held(engine)
    assert _run(billing_env, inside, 10).success
    assert _count(engine, usage_samples) == samples
    assert buckets_by_key(engine, SOURCE) == buckets, "a lost baseline would count a first sample in full"
    assert ledger_rows(engine) == ledger
    assert _held(engine) == held, "a lost baseline shows up as a held first sample"

    # A replay past the horizon is refused by the run: nothing billed.
    refused = _run(billing_env, old, 10, raise_on_error=False)
    assert not refused.success
    failure = next(e for e in refused.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "older than the dedup horizon" in failure.step_failure_data.error.message
    assert ledger_rows(engine) == ledger and _count(engine, usage_samples) == samples

    # Pruning again finds nothing more.
    again = prune(engine, timedelta(days=2), now)
    assert sum(again.rows_deleted.values()) == 0 and again.partitions_dropped == []


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_upgrade_to_day_partitions_keeps_every_row(database_url):
    engine = get_engine(database_url)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0004")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    times = [now - timedelta(days=50), now - timedelta(days=10), now - timedelta(minutes=5)]
    identity = dict(source_id="s", node_id="n", env="e", inbound_tag="t", email="x@example.test")
    with engine.begin() as connection:
        connection.execute(usage_samples.insert(), [
            dict(identity, uuid=f"u{i}", collected_at=at, uplink_bytes_total=i, downlink_bytes_total=i, ingested_at=now)
            for i, at in enumerate(times)
        ])
        connection.execute(legacy_snapshot_samples.insert(), [
            dict(identity, uuid=f"u{i}", collected_at=at, uplink_bytes_total=i, downlink_bytes_total=i, pulled_at=now)
            for i, at in enumerate(times)
        ])
        connection.execute(exporter_snapshot_rows.insert(), [
            dict(identity, uuid=f"u{i}", collected_at=at, uplink_bytes_total=i, downlink_bytes_total=i, delivery_seq=i, fetched_at=now)
            for i, at in enumerate(times)
        ])
        connection.execute(exporter_pages.insert(), [
            dict(source_id="s", fetch_since=at, fetch_until=at + timedelta(minutes=1), page_no=0, item_count=1, sample_count=1,
                 body_bytes=10, emitted_at=at, received_at=at, run_id=None)
            for at in times
        ])
    tables = (usage_samples, legacy_snapshot_samples, exporter_snapshot_rows, exporter_pages)

    kept_body = {"fetch_id", "request_cursor", "body_sha256", "body_encoding", "body"}  # added by 0012, after this step

    def contents():
        with engine.connect() as connection:
            return {
                t.name: sorted(tuple(row) for row in connection.execute(select(*(c for c in t.columns if c.name not in kept_body))))
                for t in tables
            }

    before = contents()
    with engine.begin() as connection:
        # 0010: the last revision where usage_samples is a table (0011 moves it behind a view,
        # test_migrations.py holds that step to the same rule).
        command.upgrade(alembic_config(connection), "0010")
    assert contents() == before, "the upgrade lost or changed a row"
    with engine.connect() as connection:
        for table in tables:
            assert connection.execute(text("SELECT relkind FROM pg_class WHERE relname = :t"), {"t": table.name}).scalar() == "p"
            homes = dict(connection.execute(text(
                f"SELECT {'fetch_since' if table is exporter_pages else 'collected_at'}, tableoid::regclass::text FROM {table.name}")).all())
            assert homes[times[0]] == f"{table.name}_default", "rows older than 40 days go to DEFAULT"
            assert homes[times[1]] == f"{table.name}_p{times[1]:%Y%m%d}", "a recent day with data gets its partition"
        persistence = set(connection.execute(text(
            "SELECT c.relpersistence FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'exporter_snapshot_rows'")).scalars())
        assert persistence == {"u"}, "staging partitions stay unlogged"
    with engine.begin() as connection:
        new_id = connection.execute(exporter_pages.insert().returning(exporter_pages.c.id), [
            dict(source_id="s", fetch_since=now, fetch_until=now, page_no=1, item_count=0, sample_count=0, body_bytes=0,
                 emitted_at=now, received_at=now, run_id=None)]).scalar_one()
    assert new_id > max(row[0] for row in before["exporter_pages"]), "the id sequence survived the rebuild"

    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0004")
    after_downgrade = contents()
    assert len(after_downgrade["exporter_pages"]) == 4 and after_downgrade["usage_samples"] == before["usage_samples"]
    with engine.connect() as connection:
        assert connection.execute(text("SELECT relkind FROM pg_class WHERE relname = 'usage_samples'")).scalar() == "r"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_prune_job_runs_in_dagster_outside_the_billing_partitions(billing_env):
    job = defs.resolve_job_def("prune_job")
    assert job.partitions_def is None and "billing/source" not in job.tags, "pruning must not queue behind a source"
    assert defs.resolve_schedule_def("prune_schedule").job_name == "prune_job"
    result = job.execute_in_process(instance=billing_env.instance())
    assert result.success
    (materialization,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
    metadata = materialization.step_output_data.metadata
    assert metadata["cutoff"].value == prune_cutoff(now_utc(), timedelta(days=32)).isoformat()
    assert metadata["rows_deleted"].value == 0
