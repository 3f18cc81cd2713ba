"""Every run that touches a source is serialized per source, however it was launched.

A UI replay (GraphQL `launchPartitionBackfill`, exactly what the UI's
"Materialize…" dialog sends) produced runs without `billing/source`, so the
queue's per-source limit did not hold them. The coordinator now derives the
tag from the run's own partition tags before queueing.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import dagster as dg
import pytest

from billing_assets.core.timeutil import MINUTE
from billing_assets.defs.runs import BILLING_ASSETS, SOURCE_TAG, has_unfinished_run, range_tags, source_of_run
from billing_assets_tests.support.browser import webserver
from billing_assets_tests.support.daemons import (
    drive_backfill,
    execute_backfill_iteration,
    in_process_workspace,
    write_test_instance_yaml,
)
from billing_assets_tests.support.db import buckets_by_key

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { invalidOutputName }
    ... on UnauthorizedError { message }
  }
}
"""


def test_the_source_is_read_from_dagster_partition_tags(recent_hour):
    ranged = range_tags("eu-1", recent_hour, recent_hour + 10 * MINUTE)
    assert source_of_run(ranged) == "eu-1"
    assert source_of_run({"dagster/partition": "2026-11-30-10:05|eu.1", "dagster/partition/source": "eu.1"}) == "eu.1"
    assert source_of_run({"dagster/partition": "2026-11-30-10:05|us-2"}) == "us-2"
    mixed = {**ranged, "dagster/asset_partition_range_end": "2026-11-30-10:05|us-2"}
    assert source_of_run(mixed) is None, "a run naming two sources is not guessed"
    assert source_of_run({SOURCE_TAG: "x", **ranged}) == "x", "a launcher's own tag wins"
    assert source_of_run({"dagster/backfill": "abc"}) is None


def test_a_launchpad_pull_is_tagged_from_its_config():
    from billing_assets.defs.automation.legacy_pull import pull_run_config
    from billing_assets.defs.run_coordinator import _configured_source

    assert _configured_source(pull_run_config("legacy")) == "legacy"
    assert _configured_source({}) is None and _configured_source(None) is None


@pytest.mark.slow
def test_a_ui_backfill_is_tagged_with_its_source_and_seen_in_flight(billing_env, recent_hour, sqlite_only_instance):
    """Launched through the real webserver's GraphQL, run by Dagster's own backfill and queue daemons."""
    start = recent_hour
    billing_env.fleet.start("ui-1", billing_start=start - timedelta(hours=1), users=2)
    billing_env.write_registry()
    billing_env.sync_partitions()
    instance = billing_env.instance()
    keys = [f"{(start + n * MINUTE):%Y-%m-%d-%H:%M}|ui-1" for n in range(3)]
    params = {
        "partitionNames": keys,
        "assetSelection": [{"path": [name]} for name in BILLING_ASSETS],
        "fromFailure": False,
    }
    with webserver(billing_env.dagster_home, billing_env.root / "logs") as server:
        launched = server.graphql(LAUNCH, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]
    assert instance.get_backfill(backfill_id).tags.get(SOURCE_TAG) is None, "the UI sets no billing tag"

    with in_process_workspace(instance) as context:
        list(execute_backfill_iteration(context, logging.getLogger("test")))  # creates and submits the run
    (queued,) = [r.dagster_run for r in instance.get_run_records() if r.dagster_run.tags.get("dagster/backfill") == backfill_id]
    assert queued.status == dg.DagsterRunStatus.QUEUED
    assert queued.tags[SOURCE_TAG] == "ui-1", "the queue's per-source limit keys on this tag"
    assert has_unfinished_run(instance, "ui-1"), "the collection sensor sees the UI's run in flight"

    assert drive_backfill(instance, backfill_id).status.value == "COMPLETED_SUCCESS"
    assert not has_unfinished_run(instance, "ui-1")
    assert buckets_by_key(billing_env.engine, "ui-1"), "the replay billed its range"


@pytest.fixture
def sqlite_only_instance(billing_env):
    if billing_env.engine.dialect.name != "sqlite":
        pytest.skip("the coordinator does not depend on the billing database")
    write_test_instance_yaml(billing_env.dagster_home)
