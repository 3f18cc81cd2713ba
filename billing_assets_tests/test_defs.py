"""The code location as Dagster tools see it: definitions, the production
instance file against a real PostgreSQL, and the webserver's GraphQL view."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from billing_assets.definitions import defs

ROOT = Path(__file__).resolve().parents[1]
ASSETS = {"exporter_snapshots", "usage_samples", "usage_minute_buckets", "billing_ledger"}
SENSORS = {"exporter_sources_sensor", "collection_sensor", "legacy_latest_sensor", "partition_status_sensor", "remittance_sensor"}
SCHEDULES = {"reconcile_schedule", "source_health_schedule", "prune_schedule"}
JOBS = {"prune_job", "legacy_pull_job", "legacy_billing_job", "source_health_job"}  # named jobs (asset jobs aside)
CHECKS = {"source_freshness", "source_completeness"}  # on the unpartitioned source_health asset
BILLING_CHECKS = {  # partitioned like the billing assets
    "usage_samples": {"no_conflicting_deliveries"},
    "usage_minute_buckets": {"no_implausible_usage"},
    "billing_ledger": {"ledger_matches_buckets"},
}
TABLES = {
    "exporter_snapshots": "exporter_pages", "usage_samples": "usage_samples",  # pages kept as received (0012)
    "usage_minute_buckets": "usage_minute_buckets", "billing_ledger": "billing_ledger",
}


def test_definitions_hold_assets_checks_sensors_schedules():
    """Exactly these sensors, schedules and checks: a new one must be listed here (and in the docs)."""
    graph = defs.resolve_asset_graph()
    assert ASSETS <= {key.to_user_string() for key in graph.get_all_asset_keys()}
    checks: dict[str, set[str]] = {}
    for key in graph.asset_check_keys:
        checks.setdefault(key.asset_key.to_user_string(), set()).add(key.name)
    assert {asset: names for asset, names in checks.items() if asset in ASSETS} == BILLING_CHECKS
    assert checks["hourly_usage"] == {"hour_complete", "no_unassigned_usage"}
    assert checks["remittance"] == {"no_dead_letters"}
    assert checks["source_health"] == CHECKS
    assert {sensor.name for sensor in defs.sensors} == SENSORS
    assert {schedule.name for schedule in defs.schedules} == SCHEDULES
    assert {job.name for job in defs.jobs} == JOBS
    # The legacy sensor requests pull runs and billing range runs of exactly the four billing assets.
    assert {job.name for job in defs.resolve_sensor_def("legacy_latest_sensor").jobs} == {"legacy_pull_job", "legacy_billing_job"}
    selected = defs.resolve_job_def("legacy_billing_job").asset_layer.selected_asset_keys
    assert {key.to_user_string() for key in selected} == ASSETS
    for name in ASSETS:
        node = graph.get(dg.AssetKey(name))
        assert node.backfill_policy == dg.BackfillPolicy.single_run()
        assert node.partitions_def.partitions_defs[1].partitions_def.name == "exporter_sources"


def test_billing_assets_show_their_table_contract():
    """Table name and columns in the UI come from the SQLAlchemy models (the read contract)."""
    from billing_assets.storage.schema import metadata, views

    models = {**views.tables, **metadata.tables}  # usage_samples is a view of the contract columns (0011)
    graph = defs.resolve_asset_graph()
    for asset, table in TABLES.items():
        node = graph.get(dg.AssetKey(asset))
        assert node.metadata["dagster/table_name"] == table
        columns = [column.name for column in node.metadata["dagster/column_schema"].columns]
        assert columns == [column.name for column in models[table].columns]
        assert node.owners == ["team:billing"]
        assert "dagster/code_references" in node.metadata


def test_every_asset_has_owners_code_references_and_a_column_schema():
    """Every asset, downstream and health included; every one that writes a table names it."""
    from billing_assets.storage.schema import metadata, views

    models = {**views.tables, **metadata.tables}

    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.owners == ["team:billing"], key
        assert "dagster/code_references" in node.metadata, key
        assert node.metadata["dagster/column_schema"].columns, key
        if key.to_user_string() == "source_health":  # a report: reads tables, writes none
            assert "dagster/table_name" not in node.metadata
            continue
        table = node.metadata["dagster/table_name"]
        assert [c.name for c in node.metadata["dagster/column_schema"].columns] == [c.name for c in models[table].columns]


def test_dagster_cli_validates_the_workspace(tmp_path):
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path))
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.postgres
def test_production_instance_yaml_runs_on_postgres_with_per_source_limit(postgres_server, tmp_path, monkeypatch):
    url = postgres_server.create_database(prefix="dagster")
    database = url.rsplit("/", 1)[1]
    shutil.copy(ROOT / "deploy" / "dagster.yaml", tmp_path / "dagster.yaml")
    for name, value in {
        "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(postgres_server.port), "DAGSTER_PG_DB": database,
        "DAGSTER_PG_USER": "postgres", "DAGSTER_PG_PASSWORD": "",
    }.items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        limits = instance.run_coordinator.get_run_queue_config().tag_concurrency_limits
        assert {"key": "billing/source", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
        job = defs.resolve_implicit_global_asset_job_def()
        run = instance.create_run_for_job(job, tags={"billing/source": "eu-1"})
        assert instance.get_run_records(filters=dg.RunsFilter(tags={"billing/source": "eu-1"}))[0].dagster_run.run_id == run.run_id


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


WORKSPACE_QUERY = """
{
  repositoriesOrError { ... on RepositoryConnection { nodes {
    name sensors { name sensorState { status } } schedules { name scheduleState { status } }
  } } }
  assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name } } } }
}
"""


@pytest.mark.slow
def test_webserver_shows_sensors_schedules_and_checks(tmp_path):
    """What `dagster dev` serves, asked through the webserver's GraphQL API."""
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=dict(os.environ, DAGSTER_HOME=str(tmp_path)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        data = None
        for _ in range(240):
            try:
                data = _graphql(port, WORKSPACE_QUERY)
                if data["repositoriesOrError"].get("nodes"):
                    break
            except (OSError, KeyError, TypeError):
                pass
            time.sleep(0.5)
        assert data and data["repositoriesOrError"].get("nodes"), "webserver never served the code location"
        repo = data["repositoriesOrError"]["nodes"][0]
        sensors = {s["name"]: s["sensorState"]["status"] for s in repo["sensors"]}
        schedules = {s["name"]: s["scheduleState"]["status"] for s in repo["schedules"]}
        assert SENSORS <= set(sensors) and all(sensors[name] == "RUNNING" for name in SENSORS)
        assert SCHEDULES <= set(schedules) and all(schedules[name] == "RUNNING" for name in SCHEDULES)
        checks = {
            check["name"]
            for node in data["assetNodes"] if node["assetKey"]["path"] == ["source_health"]
            for check in node["assetChecksOrError"]["checks"]
        }
        assert CHECKS <= checks
    finally:
        server.terminate()
        server.wait(timeout=30)
