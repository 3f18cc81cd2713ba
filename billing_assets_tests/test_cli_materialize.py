"""Acceptance of the spine through the command lines operators and CI use.

`dagster asset materialize --partition-range` over 30 minutes of one source
must be ONE run against an exporter reached at https://127.0.0.1 whose
certificate only names `exporter.test` (bearer token, pinned CA), and
running it again must change nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from billing_assets.core.timeutil import MINUTE, minute_key
from billing_assets_tests.support.db import buckets_by_key, ledger_rows, nonzero
from billing_assets_tests.support.oracle import exporter_samples, expected_buckets, within

BIN = Path(sys.executable).parent
ASSETS = "exporter_snapshots,usage_samples,usage_minute_buckets,billing_ledger"


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=dict(os.environ), timeout=300)


def test_dagster_cli_partition_range_is_one_run_and_replay_is_a_no_op(billing_env, recent_hour):
    start, end = recent_hour, recent_hour + timedelta(minutes=30)
    exporter = billing_env.fleet.start("eu-1", billing_start=start, users=10, server_name="exporter.test")
    assert exporter.server.url.startswith("https://127.0.0.1:")
    billing_env.write_registry()

    synced = _run(str(BIN / "billing"), "sources", "sync")
    assert synced.returncode == 0, synced.stderr
    assert "eu-1" in synced.stdout

    partition_range = f"{minute_key(start)}|eu-1...{minute_key(end - MINUTE)}|eu-1"
    command = (str(BIN / "dagster"), "asset", "materialize", "-m", "billing_assets.definitions",
               "--select", ASSETS, "--partition-range", partition_range)
    first = _run(*command)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert exporter.token not in first.stdout + first.stderr

    instance = billing_env.instance()
    assert len(instance.get_run_records()) == 1
    assert instance.get_run_records()[0].dagster_run.tags.get("billing/source") == "eu-1", "seen by the in-flight check"
    engine = billing_env.engine
    shape = exporter.server.shape
    oracle = within(expected_buckets(exporter_samples(shape.model, shape.node_id, shape.env, start - timedelta(hours=1), end), start), start, end)
    buckets = buckets_by_key(engine, "eu-1")
    assert nonzero(buckets) == nonzero(oracle)
    ledger = ledger_rows(engine, "eu-1")
    assert ledger

    second = _run(*command)
    assert second.returncode == 0, second.stderr[-3000:]
    assert buckets_by_key(engine, "eu-1") == buckets
    assert ledger_rows(engine, "eu-1") == ledger


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_dg_sees_the_code_location_and_launches_a_range_as_one_run(billing_env, recent_hour):
    """`[tool.dg]` in pyproject.toml: `dg` loads the same definitions as `dagster` and launches the same one run."""
    project = Path(__file__).resolve().parents[1]
    listed = subprocess.run([str(BIN / "dg"), "list", "defs", "--json"], capture_output=True, text=True, cwd=project, timeout=300)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert all(f'"{name}"' in listed.stdout for name in ASSETS.split(",") + ["collection_sensor", "reconcile_schedule"])

    start, end = recent_hour, recent_hour + timedelta(minutes=5)
    billing_env.fleet.start("eu-1", billing_start=start, users=5)
    billing_env.write_registry()
    billing_env.sync_partitions()
    partition_range = f"{minute_key(start)}|eu-1...{minute_key(end - MINUTE)}|eu-1"
    launched = subprocess.run(
        [str(BIN / "dg"), "launch", "--assets", ASSETS, "--partition-range", partition_range],
        capture_output=True, text=True, cwd=project, timeout=300,
    )
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    runs = billing_env.instance().get_run_records()
    assert len(runs) == 1 and runs[0].dagster_run.tags.get("billing/source") == "eu-1"
    assert {key[-1] for key in nonzero(buckets_by_key(billing_env.engine, "eu-1"))} == {start + i * MINUTE for i in range(5)}


def test_billing_demo_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.delenv("BILLING_DATABASE_URL", raising=False)
    result = _run(str(BIN / "billing"), "demo", "--minutes", "3", "--users", "5", "--workdir", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "no double charge" in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("demo-")]
    assert len(lines) == 2 and all(" 3 " in line for line in lines)
    # Remittance: the injected 503 leaves records retryable, the sensor's retry sends them, the books agree.
    assert "retryable" in result.stdout and "remittance_sensor: " in result.stdout and "retry due" in result.stdout
    assert "forced by billing-demo" in result.stdout
    assert "equal; every record sent: yes" in result.stdout


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_dotted_source_id_survives_the_cli_partition_range(billing_env, recent_hour):
    """The registry allows '.' inside an id; the one place it could bite is the
    '...' split of `--partition-range`, so drive that split for real (2 minutes)."""
    start = recent_hour
    billing_env.fleet.start("eu.1", billing_start=start, users=2)
    billing_env.write_registry()
    billing_env.sync_partitions()
    partition_range = f"{minute_key(start)}|eu.1...{minute_key(start + MINUTE)}|eu.1"
    result = _run(str(BIN / "dagster"), "asset", "materialize", "-m", "billing_assets.definitions",
                  "--select", "exporter_snapshots,usage_samples", "--partition-range", partition_range)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = billing_env.instance().get_run_records()
    assert run.dagster_run.tags["dagster/asset_partition_range_start"] == f"{minute_key(start)}|eu.1"
    from billing_assets.storage import checkpoints

    with billing_env.engine.connect() as connection:
        mark = checkpoints.read_all(connection)["eu.1"]
    assert mark["last_successful_until"] == start + 2 * MINUTE, "both minutes of the range ran for eu.1"
