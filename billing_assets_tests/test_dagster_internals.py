"""The private Dagster API we depend on (defs/dagster_internals.py), against the installed Dagster.

If an upgrade moves or changes any of it, these fail first and say which.
"""

from __future__ import annotations

import warnings
from datetime import timedelta

import dagster as dg

from billing_assets.defs import dagster_internals as internals


def test_range_tags_are_the_ones_dagster_sets_for_a_single_run_backfill():
    from dagster._core.storage import tags

    assert internals.RANGE_START_TAG == tags.ASSET_PARTITION_RANGE_START_TAG
    assert internals.RANGE_END_TAG == tags.ASSET_PARTITION_RANGE_END_TAG


def test_unfinished_statuses_are_dagsters():
    from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

    assert set(internals.UNFINISHED_RUN_STATUSES) == set(NOT_FINISHED_STATUSES)


def test_asset_backfills_are_built_as_dagster_builds_them_from_one_membership_query(billing_env, recent_hour, monkeypatch):
    """Equal to Dagster's own `from_partitions_by_assets` over the real asset graph, for each source of a batch;
    the batch's membership is one query and its minute range is resolved once."""
    from dagster._core.definitions.selector import PartitionRangeSelector, PartitionsByAssetSelector, PartitionsSelector
    from dagster._core.execution.backfill import PartitionBackfill

    from billing_assets.definitions import defs
    from billing_assets.defs.partitions import SOURCES_PARTITION, billing_partitions, partition_key

    instance = billing_env.instance()
    instance.add_dynamic_partitions(SOURCES_PARTITION, ["bf-1", "bf-2"])
    minutes = [recent_hour, recent_hour + timedelta(minutes=1), recent_hour + timedelta(minutes=2)]
    assets = ["usage_samples", "billing_ledger"]
    known = internals.known_dynamic_partitions(instance, SOURCES_PARTITION, ["bf-1", "bf-2", "bf-gone"])
    assert [known.has_dynamic_partition(SOURCES_PARTITION, s) for s in ("bf-1", "bf-2", "bf-gone")] == [True, True, False]

    def no_more_queries(*args, **kwargs):
        raise AssertionError("the known store asked the instance again")

    built = {}
    with monkeypatch.context() as patch, warnings.catch_warnings():
        patch.setattr(type(instance), "has_dynamic_partition", no_more_queries)
        patch.setattr(type(instance), "get_dynamic_partitions", no_more_queries)
        warnings.simplefilter("error", DeprecationWarning)  # the names path warned (AssetSelection.sources)
        for n, source_id in enumerate(("bf-1", "bf-2")):
            built[source_id] = internals.asset_backfill(
                known, billing_partitions, f"abcd123{n}", partition_key(minutes[0], source_id), partition_key(minutes[-1], source_id),
                assets, {"billing/source": source_id}, title=f"t{n}", description="d",
            )  # fmt: skip
    assert len(known.ranges) == 1, "both sources' minute range resolved once"

    for n, (source_id, backfill) in enumerate(built.items()):
        instance.add_backfill(backfill)
        stored = instance.get_backfill(f"abcd123{n}")
        assert stored.tags == {"billing/source": source_id} and stored.title == f"t{n}" and stored.description == "d"
        assert sorted(key.to_user_string() for key in stored.asset_selection) == sorted(assets)
        covered = {(p.asset_key.to_user_string(), str(p.partition_key)) for p in stored.asset_backfill_data.target_subset.iterate_asset_partitions()}
        assert covered == {(asset, partition_key(minute, source_id)) for asset in assets for minute in minutes}

        selection = PartitionsSelector(ranges=[PartitionRangeSelector(start=partition_key(minutes[0], source_id), end=partition_key(minutes[-1], source_id))])
        with dg.partition_loading_context(dynamic_partitions_store=instance):
            dagsters = PartitionBackfill.from_partitions_by_assets(
                backfill_id=backfill.backfill_id, asset_graph=defs.resolve_asset_graph(), backfill_timestamp=backfill.backfill_timestamp,
                tags=backfill.tags, dynamic_partitions_store=instance,
                partitions_by_assets=[PartitionsByAssetSelector(asset_key=dg.AssetKey(name), partitions=selection) for name in assets],
                title=backfill.title, description="d", run_config=None,
            )  # fmt: skip
        assert backfill.asset_backfill_data == dagsters.asset_backfill_data


def test_reconstruction_is_told_apart_from_a_first_load():
    from dagster._core.definitions.definitions_load_context import DefinitionsLoadContext, DefinitionsLoadType

    # The context is process-wide and outlives an in-process run that set it: start from none.
    previous = DefinitionsLoadContext._instance
    try:
        DefinitionsLoadContext._instance = None
        assert not internals.loading_in_run_worker()
        DefinitionsLoadContext.set(DefinitionsLoadContext(load_type=DefinitionsLoadType.RECONSTRUCTION, repository_load_data=None))
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
