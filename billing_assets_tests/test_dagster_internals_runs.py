"""The private Dagster API a running step uses (defs/dagster_internals.py), against the installed Dagster.

Per-minute metadata and held instance connections: if an upgrade moves the
metadata accumulator or the storages' engines, these fail first and say which.
"""


import pytest
import yaml
from sqlalchemy import event, pool

import dagster as dg

from billing_assets.defs import dagster_internals as internals

grid = dg.MultiPartitionsDefinition(
    {"minute": dg.StaticPartitionsDefinition(["m1", "m2", "m3"]), "source": dg.StaticPartitionsDefinition(["a", "b"])}
)


@dg.asset(partitions_def=grid, backfill_policy=dg.BackfillPolicy.single_run())
def ranged(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    keys = [str(key) for key in context.partition_keys]
    internals.add_partition_metadata(context, {key: {"own": f"value of {key}"} for key in keys[1:]})
    return dg.MaterializeResult(metadata={"shared": len(keys), "own": "the run's"})


@dg.asset(partitions_def=grid, backfill_policy=dg.BackfillPolicy.single_run())
def stray(context: dg.AssetExecutionContext) -> None:
    internals.add_partition_metadata(context, {"m3|b": {"own": 1}})


def _materialize(asset, instance, last="m2|a"):
    job = dg.Definitions(assets=[asset]).resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance,
        tags={internals.RANGE_START_TAG: "m1|a", internals.RANGE_END_TAG: last},
        raise_on_error=False,
    )


def test_each_key_gets_its_own_metadata_over_the_shared(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = _materialize(ranged, instance)
        assert result.success
        shown = {
            event.partition: event.step_materialization_data.materialization.metadata
            for event in result.get_asset_materialization_events()
        }
    keys = sorted(shown)
    assert keys == ["m1|a", "m2|a"]
    assert shown["m1|a"]["own"].value == "the run's", "a key without its own value keeps the shared one"
    assert shown["m2|a"]["own"].value == "value of m2|a"
    assert all(metadata["shared"].value == 2 for metadata in shown.values())


def test_metadata_for_a_key_outside_the_run_is_refused(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = _materialize(stray, instance)
    assert not result.success
    failure = next(event for event in result.all_events if event.is_step_failure)
    assert "does not target" in failure.event_specific_data.error.message


def test_sqlite_instance_storage_is_left_alone(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        assert internals.hold_instance_connections(instance) is False


@pytest.fixture
def postgres_instance(tmp_path, postgres_server):
    """A Dagster instance whose runs and events live in a fresh PostgreSQL database (dagster-postgres, psycopg2)."""
    url = postgres_server.create_database().replace("postgresql+psycopg://", "postgresql+psycopg2://")
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({"storage": {"postgres": {"postgres_url": url}}, "telemetry": {"enabled": False}}))
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        yield instance
    finally:
        instance.dispose()


@pytest.mark.postgres
def test_postgres_instance_storage_keeps_one_connection_and_still_records_runs(postgres_instance):
    instance = postgres_instance
    assert isinstance(instance.event_log_storage._engine.pool, pool.NullPool), "dagster-postgres default"
    assert internals.hold_instance_connections(instance) is True
    assert not isinstance(instance.event_log_storage._engine.pool, pool.NullPool)
    assert not isinstance(instance.run_storage._engine.pool, pool.NullPool)
    assert internals.hold_instance_connections(instance) is False, "once per instance"
    opened = []
    for storage in (instance.run_storage, instance.event_log_storage, instance.schedule_storage):
        event.listen(storage._engine, "connect", lambda *_: opened.append(1))
    assert _materialize(ranged, instance).success
    after_first = len(opened)
    for _ in range(2):
        assert _materialize(ranged, instance).success
    assert len(instance.fetch_materializations(dg.AssetKey("ranged"), limit=10).records) == 6
    # Later runs' events go over the connections the first one made (nested ones included).
    assert len(opened) == after_first <= 3 * (1 + internals.HELD_OVERFLOW)


@pytest.mark.postgres
def test_a_held_instance_asks_the_catalog_once_for_a_table_it_has(postgres_instance):
    instance = postgres_instance
    storage = instance.event_log_storage
    assert internals.hold_instance_connections(instance) is True
    asked = []
    event.listen(storage._engine, "before_cursor_execute", lambda *args: asked.append(args[2]))
    assert storage.has_table("asset_check_executions") and storage.supports_asset_checks
    first = len(asked)
    assert first > 0, "the first question goes to the catalog"
    assert storage.has_table("asset_check_executions") and storage.supports_asset_checks
    assert len(asked) == first, "a table seen to exist is not asked about again"
    assert storage.has_table("no_such_table") is False and storage.has_table("no_such_table") is False
    assert len(asked) > first, "a missing table is asked about each time (a migration may add it)"
    assert _materialize(ranged, instance).success
