"""The partition-status warmer sensor, evaluated for real after real runs.

The UI reads each billing asset's partition status from a cache that Dagster
otherwise builds on the first page view (9 s at fleet scale). After the
sensor ticks, the cache must exist for every billing asset, match the
current partitions definition, and already count the newest materialization.
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
from dagster._core.definitions.partitions.context import partition_loading_context

from billing_assets.defs.runs import materialize_range
from billing_assets.definitions import defs
from billing_assets.defs.automation.partition_status_sensor import BILLING_ASSET_KEYS, partition_status_sensor
from billing_assets.defs.partitions import billing_partitions, partition_key


def cached_status(instance: dg.DagsterInstance, asset_key: dg.AssetKey):
    record = next(iter(instance.get_asset_records([asset_key])), None)
    return record.asset_entry.cached_status if record else None


def test_sensor_builds_and_extends_the_cache_the_ui_reads(billing_env, recent_hour):
    start = recent_hour
    billing_env.fleet.start("ps-1", billing_start=start, users=2)
    billing_env.write_registry()
    billing_env.sync_partitions()
    instance = billing_env.instance()
    assert materialize_range(defs, instance, "ps-1", start, start + timedelta(minutes=3)).success
    assert all(cached_status(instance, key) is None for key in BILLING_ASSET_KEYS), "nothing built it yet"

    result = partition_status_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason) and "4 of 4" in result.skip_message

    with partition_loading_context(None, instance):
        definition_id = billing_partitions.get_serializable_unique_identifier()
    for key in BILLING_ASSET_KEYS:
        cached = cached_status(instance, key)
        assert cached is not None and cached.partitions_def_id == definition_id, key
    first = cached_status(instance, dg.AssetKey("usage_minute_buckets"))

    # A later run's materializations are folded in by the next tick.
    assert materialize_range(defs, instance, "ps-1", start + timedelta(minutes=3), start + timedelta(minutes=5)).success
    partition_status_sensor(dg.build_sensor_context(instance=instance))
    later = cached_status(instance, dg.AssetKey("usage_minute_buckets"))
    assert later.latest_storage_id > first.latest_storage_id
    with partition_loading_context(None, instance):
        materialized = later.deserialize_materialized_partition_subsets(billing_partitions)
        keys = {str(key) for key in materialized.get_partition_keys()}
    assert keys == {partition_key(start + timedelta(minutes=m), "ps-1") for m in range(5)}


def test_sensor_skips_quietly_without_sources(billing_env):
    instance = billing_env.instance()
    result = partition_status_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason) and "0 of 4" in result.skip_message
