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


def test_an_asset_backfill_is_built_with_its_partitions_and_tags(billing_env, recent_hour, monkeypatch):
    """Built as Dagster's own `from_partitions_by_assets` over the real asset graph builds it, from one membership query."""
    from dagster._core.definitions.selector import PartitionRangeSelector, PartitionsByAssetSelector, PartitionsSelector
    from dagster._core.execution.backfill import PartitionBackfill

    from billing_assets.definitions import defs
    from billing_assets.defs.partitions import SOURCES_PARTITION, billing_partitions, partition_key

    instance = billing_env.instance()
    instance.add_dynamic_partitions(SOURCES_PARTITION, ["bf-1", "bf-2"])
    keys = [partition_key(recent_hour, "bf-1"), partition_key(recent_hour.replace(minute=recent_hour.minute + 1), "bf-1")]
    assets = ["usage_samples", "billing_ledger"]
    known = internals.known_dynamic_partitions(instance, SOURCES_PARTITION, ["bf-1", "bf-2", "bf-gone"])
    assert [known.has_dynamic_partition(SOURCES_PARTITION, s) for s in ("bf-1", "bf-2", "bf-gone")] == [True, True, False]

    def no_more_queries(*args, **kwargs):
        raise AssertionError("the known store asked the instance again")

    monkeypatch.setattr(type(instance), "has_dynamic_partition", no_more_queries)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the names path warned (AssetSelection.sources)
        backfill = internals.asset_backfill(
            known, billing_partitions, "abcd1234", keys[0], keys[-1], assets, {"billing/source": "bf-1"}, title="t", description="d"
        )
    monkeypatch.undo()
    instance.add_backfill(backfill)
    stored = instance.get_backfill("abcd1234")
    assert stored.tags == {"billing/source": "bf-1"} and stored.title == "t" and stored.description == "d"
    assert sorted(key.to_user_string() for key in stored.asset_selection) == sorted(assets)
    covered = {(p.asset_key.to_user_string(), str(p.partition_key)) for p in stored.asset_backfill_data.target_subset.iterate_asset_partitions()}
    assert covered == {(asset, key) for asset in assets for key in keys}

    selection = PartitionsSelector(ranges=[PartitionRangeSelector(start=keys[0], end=keys[-1])])
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        dagsters = PartitionBackfill.from_partitions_by_assets(
            backfill_id="abcd1234", asset_graph=defs.resolve_asset_graph(), backfill_timestamp=backfill.backfill_timestamp,
            tags=backfill.tags, dynamic_partitions_store=instance,
            partitions_by_assets=[PartitionsByAssetSelector(asset_key=dg.AssetKey(name), partitions=selection) for name in assets],
            title="t", description="d", run_config=None,
        )  # fmt: skip
    assert backfill.asset_backfill_data == dagsters.asset_backfill_data


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
