"""Keeping `exporter_sources` equal to the registry, by sensor and by CLI.

The incident this guards against: a registry that fails to load read as "no
sources" would delete every partition and hide billing history from the UI.
"""

from __future__ import annotations

import dagster as dg
import yaml

from billing_assets.cli.main import main
from billing_assets.defs.automation.source_partitions import partition_changes
from billing_assets.defs.automation.sources_sensor import exporter_sources_sensor
from billing_assets.defs.partitions import SOURCES_PARTITION
from billing_assets.defs.resources import BillingStore


def test_partition_changes_is_a_set_difference():
    changes = partition_changes(["a", "b"], ["b", "c", "d"])
    assert changes.add == ("c", "d") and changes.remove == ("a",)
    assert partition_changes(["a"], ["a"]).empty


def _evaluate(instance, sources_file):
    context = dg.build_sensor_context(instance=instance, resources={"billing": BillingStore(sources_file=str(sources_file))})
    result = exporter_sources_sensor(context)
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests or []:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            else:
                for key in request.partition_keys:
                    instance.delete_dynamic_partition(request.partitions_def_name, key)
    return result


def test_sensor_follows_the_registry_and_never_deletes_on_a_broken_one(billing_env, recent_hour):
    billing_env.fleet.start("a-1", billing_start=recent_hour)
    billing_env.fleet.start("b-1", billing_start=recent_hour, seed=2)
    billing_env.write_registry()
    instance = billing_env.instance()

    _evaluate(instance, billing_env.sources_file)
    assert sorted(instance.get_dynamic_partitions(SOURCES_PARTITION)) == ["a-1", "b-1"]
    assert isinstance(_evaluate(instance, billing_env.sources_file), dg.SkipReason)

    entries = yaml.safe_load(billing_env.sources_file.read_text())["sources"]
    billing_env.sources_file.write_text(yaml.safe_dump({"sources": entries[1:]}))
    _evaluate(instance, billing_env.sources_file)
    assert instance.get_dynamic_partitions(SOURCES_PARTITION) == ["b-1"]

    billing_env.sources_file.write_text("sources: [this is: not, valid")
    skipped = _evaluate(instance, billing_env.sources_file)
    assert isinstance(skipped, dg.SkipReason) and "registry not applied" in skipped.skip_message
    assert instance.get_dynamic_partitions(SOURCES_PARTITION) == ["b-1"]


def test_cli_sync_rejects_a_bad_entry_by_name_and_changes_nothing(billing_env, recent_hour, capsys):
    billing_env.fleet.start("good-1", billing_start=recent_hour)
    billing_env.write_registry(
        extra_entries=[{**billing_env.fleet.exporters["good-1"].entry, "source_id": "bad-1", "node_id": "n2",
                        "base_url": "http://203.0.113.9:8443"}]
    )
    assert main(["sources", "sync"]) == 2
    err = capsys.readouterr().err
    assert "source 'bad-1'" in err and "base_url" in err
    assert billing_env.instance().get_dynamic_partitions(SOURCES_PARTITION) == []


def test_a_removed_source_keeps_its_partition_while_a_run_of_it_is_unfinished(billing_env, recent_hour):
    from billing_assets.defs.runs import SOURCE_TAG

    billing_env.fleet.start("a-1", billing_start=recent_hour)
    billing_env.fleet.start("b-1", billing_start=recent_hour, seed=2)
    billing_env.write_registry()
    instance = billing_env.instance()
    _evaluate(instance, billing_env.sources_file)
    queued, other = (_submit_queued(instance, {SOURCE_TAG: source}) for source in ("a-1", "b-1"))
    assert instance.get_run_by_id(queued.run_id).status == dg.DagsterRunStatus.QUEUED

    # a-1 leaves the registry while its run is queued: nothing is deleted, and the tick says why.
    entries = yaml.safe_load(billing_env.sources_file.read_text())["sources"]
    billing_env.sources_file.write_text(yaml.safe_dump({"sources": entries[1:]}))
    skipped = _evaluate(instance, billing_env.sources_file)
    assert isinstance(skipped, dg.SkipReason), skipped
    assert "a-1" in skipped.skip_message and "still queued or running" in skipped.skip_message
    assert sorted(instance.get_dynamic_partitions(SOURCES_PARTITION)) == ["a-1", "b-1"]

    # Still held while running; another source's change goes through meanwhile.
    instance.handle_run_event(queued.run_id, _event(queued, "RUN_START"))
    assert instance.get_run_by_id(queued.run_id).status == dg.DagsterRunStatus.STARTED
    billing_env.fleet.start("c-1", billing_start=recent_hour, seed=3)
    billing_env.sources_file.write_text(yaml.safe_dump({"sources": entries[1:] + [billing_env.fleet.exporters["c-1"].entry]}))
    assert isinstance(_evaluate(instance, billing_env.sources_file), dg.SensorResult)
    assert sorted(instance.get_dynamic_partitions(SOURCES_PARTITION)) == ["a-1", "b-1", "c-1"]

    # The run ends (another source's unfinished run does not matter): the next tick deletes a-1.
    instance.report_run_canceled(instance.get_run_by_id(queued.run_id))
    assert instance.get_run_by_id(other.run_id).status == dg.DagsterRunStatus.QUEUED
    assert isinstance(_evaluate(instance, billing_env.sources_file), dg.SensorResult)
    assert sorted(instance.get_dynamic_partitions(SOURCES_PARTITION)) == ["b-1", "c-1"]


def _event(run, event_type: str) -> dg.DagsterEvent:
    return dg.DagsterEvent(event_type_value=getattr(dg.DagsterEventType, event_type).value, job_name=run.job_name)


def _submit_queued(instance, tags) -> dg.DagsterRun:
    """A run submitted through the instance's queued run coordinator, as the daemon
    or the UI would; no queue daemon runs here, so it stays QUEUED."""
    from billing_assets.definitions import defs
    from billing_assets_tests.support.daemons import in_process_workspace

    job = defs.resolve_implicit_global_asset_job_def()
    with in_process_workspace(instance) as workspace:
        request = workspace.create_request_context()
        remote_job = request.get_code_location("billing_assets").get_repository("__repository__").get_full_job(job.name)
        run = instance.create_run_for_job(
            job, tags=tags, remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin()
        )
        return instance.submit_run(run.run_id, request)
