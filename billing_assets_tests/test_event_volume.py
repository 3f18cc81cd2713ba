"""Dagster's per-minute event volume for range runs (defs/event_volume.py).

A range run must still record one materialization per asset and minute (the
partition view depends on it) while planning the range in one event per
asset, so a long range does not cost one storage write per planned minute.
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from billing_assets.defs.runs import BILLING_ASSETS, materialize_range
from billing_assets.defs import event_volume
from billing_assets.definitions import defs

MINUTES = 6


def test_operator_value_wins_and_defaults_fill_the_rest():
    environ = {"DAGSTER_EVENT_BATCH_SIZE": "5"}
    effective = event_volume.apply_defaults(environ)
    assert effective == {"DAGSTER_EVENT_BATCH_SIZE": "5", "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true"}
    assert environ == effective


def test_range_run_plans_once_per_asset_and_materializes_every_minute(billing_env, recent_hour):
    start, end = recent_hour, recent_hour + timedelta(minutes=MINUTES)
    billing_env.fleet.start("ev-1", billing_start=start, users=3)
    billing_env.write_registry()
    billing_env.sync_partitions()
    instance = billing_env.instance()

    result = materialize_range(defs, instance, "ev-1", start, end)
    assert result.success

    def events(kind: dg.DagsterEventType) -> list:
        return [record.dagster_event for record in instance.all_logs(result.run_id, of_type=kind)]

    planned = events(dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
    assert sorted(event.asset_key.to_user_string() for event in planned) == sorted(BILLING_ASSETS)
    materialized = events(dg.DagsterEventType.ASSET_MATERIALIZATION)
    assert len(materialized) == MINUTES * len(BILLING_ASSETS)
    partitions = {(event.asset_key.to_user_string(), event.partition) for event in materialized}
    assert len(partitions) == MINUTES * len(BILLING_ASSETS), "one materialization per asset and minute"
