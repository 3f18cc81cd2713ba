"""The whole path through real Dagster runs: HTTPS exporter -> ledger.

Each test uses a real reference exporter over TLS (pinned CA, server_name
different from the dialled IP) and a real database (SQLite file and a
PostgreSQL server started by the tests).
"""

from __future__ import annotations

from datetime import timedelta

from billing_assets.defs.runs import materialize_range
from billing_assets.definitions import defs
from billing_assets_tests.support.db import buckets_by_key, ledger_rows, ledger_sums, nonzero
from billing_assets_tests.support.oracle import exporter_samples, expected_buckets, within


def test_range_runs_once_matches_oracle_and_replay_adds_nothing(billing_env, recent_hour):
    start, end = recent_hour, recent_hour + timedelta(minutes=30)
    exporter = billing_env.fleet.start("eu-1", billing_start=start, users=10)
    billing_env.write_registry()
    billing_env.sync_partitions()
    instance = billing_env.instance()

    result = materialize_range(defs, instance, "eu-1", start, end)
    assert result.success
    assert len(instance.get_run_records()) == 1, "a 30-minute range of one source must be one run"

    engine = billing_env.engine
    shape = exporter.server.shape
    oracle = within(
        expected_buckets(exporter_samples(shape.model, shape.node_id, shape.env, start - timedelta(hours=1), end), start),
        start,
        end,
    )
    buckets = buckets_by_key(engine, "eu-1")
    assert nonzero(buckets) == nonzero(oracle)
    assert len(oracle) > 100
    assert ledger_sums(engine, "eu-1") == nonzero(buckets)
    entries_before = ledger_rows(engine)
    assert {row["entry_kind"] for row in entries_before} == {"charge"}

    replay = materialize_range(defs, instance, "eu-1", start, end)
    assert replay.success
    assert buckets_by_key(engine, "eu-1") == buckets
    assert ledger_rows(engine) == entries_before


def test_single_minute_partition_and_metadata(billing_env, recent_hour):
    billing_env.fleet.start("eu-2", billing_start=recent_hour - timedelta(hours=1), auth="mtls", users=5)
    billing_env.write_registry()
    billing_env.sync_partitions()
    instance = billing_env.instance()
    minute = recent_hour + timedelta(minutes=7)

    result = materialize_range(defs, instance, "eu-2", minute, minute + timedelta(minutes=1))
    assert result.success
    materializations = {
        event.asset_key.to_user_string(): event.step_materialization_data.materialization.metadata
        for event in result.get_asset_materialization_events()
    }
    fetched = materializations["exporter_snapshots"]
    assert fetched["pages"].value >= 1 and fetched["samples"].value > 0
    assert materializations["usage_samples"]["inserted"].value == fetched["samples"].value
    assert materializations["usage_minute_buckets"]["buckets"].value > 0
    assert materializations["billing_ledger"]["charges"].value > 0
    assert "lag_seconds" in materializations["billing_ledger"]
