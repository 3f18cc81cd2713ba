"""The private Dagster API we depend on (defs/dagster_internals.py), against the installed Dagster.

If an upgrade moves or changes any of it, these fail first and say which.
"""

from __future__ import annotations

import warnings

import dagster as dg

from billing_assets.defs import dagster_internals as internals


def test_range_tags_are_the_ones_dagster_sets_for_a_single_run_backfill():
    from dagster._core.storage import tags

    assert internals.RANGE_START_TAG == tags.ASSET_PARTITION_RANGE_START_TAG
    assert internals.RANGE_END_TAG == tags.ASSET_PARTITION_RANGE_END_TAG


def test_unfinished_statuses_are_dagsters():
    from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

    assert set(internals.UNFINISHED_RUN_STATUSES) == set(NOT_FINISHED_STATUSES)


def test_an_asset_backfill_is_added_with_its_partitions_and_tags(billing_env, recent_hour):
    from billing_assets.definitions import defs
    from billing_assets.defs.partitions import SOURCES_PARTITION, partition_key

    instance = billing_env.instance()
    instance.add_dynamic_partitions(SOURCES_PARTITION, ["bf-1"])
    keys = [partition_key(recent_hour, "bf-1"), partition_key(recent_hour.replace(minute=recent_hour.minute + 1), "bf-1")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the names path warned (AssetSelection.sources)
        backfill_id = internals.add_asset_backfill(
            instance, defs, "abcd1234", keys[0], keys[-1], ["usage_samples"], {"billing/source": "bf-1"}, title="t", description="d"
        )
    backfill = instance.get_backfill(backfill_id)
    assert backfill.tags == {"billing/source": "bf-1"} and backfill.title == "t"
    covered = {str(p.partition_key) for p in backfill.asset_backfill_data.target_subset.iterate_asset_partitions()}
    assert covered == set(keys)


def test_reconstruction_is_told_apart_from_a_first_load():
    from dagster._core.definitions.definitions_load_context import DefinitionsLoadContext, DefinitionsLoadType

    assert not internals.loading_in_run_worker()
    previous = DefinitionsLoadContext._instance
    DefinitionsLoadContext.set(DefinitionsLoadContext(load_type=DefinitionsLoadType.RECONSTRUCTION, repository_load_data=None))
    try:
        assert internals.loading_in_run_worker()
    finally:
        DefinitionsLoadContext._instance = previous
    assert dg.DagsterRunStatus.QUEUED in internals.UNFINISHED_RUN_STATUSES


def test_check_targets_are_each_keys_latest_materialization_as_dagster_counts_it():
    """The target must be what `AssetCheckPartitionInfo.is_current` compares: the key's latest materialization."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluationTargetMaterializationData

    letters = dg.StaticPartitionsDefinition(["a", "b", "c", "d"])

    @dg.asset(partitions_def=letters)
    def scratch():
        return None

    with dg.instance_for_test() as instance:
        for key in ("b", "c") + ("a",) * 7:  # "a" replayed past a page: its older materializations must not win
            assert dg.materialize([scratch], instance=instance, partition_key=key).success
        latest = {
            key: instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=scratch.key, asset_partitions=[key]), limit=1).records[0]
            for key in ("a", "b")
        }
        # A page is 2 records per key asked (6), newest first: all a's. b is on the next page.
        assert set(internals.latest_materialization_targets(instance, scratch.key, ["b", "a", "d"], max_pages=1)) == {"a"}
        targets = internals.latest_materialization_targets(instance, scratch.key, ["b", "a", "d"])
        assert set(targets) == {"a", "b"}, "a key never materialized has no target"
        for key, target in targets.items():
            assert isinstance(target, AssetCheckEvaluationTargetMaterializationData)
            assert (target.storage_id, target.run_id, target.timestamp) == (
                latest[key].storage_id, latest[key].run_id, latest[key].timestamp
            )
