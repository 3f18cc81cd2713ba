"""The whole path through real Dagster runs: HTTPS exporter -> ledger.

Each test uses a real reference exporter over TLS (pinned CA, server_name
different from the dialled IP) and a real database (SQLite file and a
PostgreSQL server started by the tests).
"""

from __future__ import annotations

from datetime import timedelta

from billing_assets.core.pricing import nanos_to_amount
from billing_assets.core.timeutil import parse_minute_key
from billing_assets.core.units import money
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
    _each_minute_shows_its_own_figures(result, buckets, ledger_rows(engine), minutes=30)
    entries_before = ledger_rows(engine)
    assert {row["entry_kind"] for row in entries_before} == {"charge"}

    replay = materialize_range(defs, instance, "eu-1", start, end)
    assert replay.success
    assert buckets_by_key(engine, "eu-1") == buckets
    assert ledger_rows(engine) == entries_before


def _each_minute_shows_its_own_figures(result, buckets: dict, entries: list[dict], minutes: int) -> None:
    """Every minute partition carries that minute's figures, computed here from the tables; the run's are `run_*`."""
    per_minute: dict = {}
    for (_node, _env, _uuid, _tag, minute), (up, down) in buckets.items():
        count, up_sum, down_sum = per_minute.get(minute, (0, 0, 0))
        per_minute[minute] = (count + 1, up_sum + up, down_sum + down)
    amounts: dict = {}
    for entry in entries:
        amounts[entry["bucket_start"]] = amounts.get(entry["bucket_start"], 0) + entry["amount_nanos"]
    shown = {
        (event.asset_key.to_user_string(), event.partition): event.step_materialization_data.materialization.metadata
        for event in result.get_asset_materialization_events()
    }
    minute_keys = sorted({partition for _, partition in shown})
    assert len(minute_keys) == minutes
    for key in minute_keys:
        minute = parse_minute_key(key.split("|")[0])
        figures = shown[("usage_minute_buckets", key)]
        assert (figures["buckets"].value, figures["uplink_bytes"].value, figures["downlink_bytes"].value) == per_minute.get(
            minute, (0, 0, 0)
        ), key
        assert figures["run_minutes"].value == minutes and "minutes" not in figures
        ledger = shown[("billing_ledger", key)]
        assert ledger["amount"].value == money(nanos_to_amount(amounts.get(minute, 0)), "USD"), key
    assert len({shown[("usage_minute_buckets", key)]["uplink_bytes"].value for key in minute_keys}) > 1, "minutes differ"


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
    assert fetched["run_pages"].value >= 1 and fetched["run_samples"].value > fetched["samples"].value > 0  # + overlap
    assert materializations["usage_samples"]["run_inserted"].value == fetched["run_samples"].value
    assert materializations["usage_samples"]["samples"].value == fetched["samples"].value, "the minute's own samples"
    buckets = materializations["usage_minute_buckets"]
    assert buckets["buckets"].value == buckets["run_buckets"].value > 0
    assert buckets["dagster/row_count"].value == buckets["buckets"].value
    ledger = materializations["billing_ledger"]
    assert ledger["run_charges"].value == ledger["entries"].value == ledger["appended"].value > 0
    assert ledger["amount"].value.endswith(" USD") and ledger["run_minutes"].value == 1
    assert "lag_seconds" in ledger
