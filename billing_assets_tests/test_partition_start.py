"""Code server and run workers agree on the rolling partition start.

The start is computed when the definitions load. A code server loaded at 23:59
keeps yesterday's start; a run worker launched at 00:01 computes today's. Every
key the server can offer must resolve in the worker, and a window older than
the dedup horizon must be refused by the run itself, clearly, writing nothing.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest
from sqlalchemy import text

from billing_assets.defs.runs import materialize_range
from billing_assets.core.timeutil import MINUTE
from billing_assets.definitions import defs
from billing_assets.defs.partitions import SERVER_GRACE, build_minute_partitions

DAY = datetime(2026, 11, 30, tzinfo=timezone.utc)
SERVER_LOADED = DAY.replace(hour=23, minute=59)
WORKER_STARTS = DAY + timedelta(days=1, minutes=1)


@pytest.fixture(autouse=True)
def _rolling(monkeypatch):
    monkeypatch.delenv("BILLING_PARTITIONS_START", raising=False)
    monkeypatch.delenv("BILLING_DEDUP_HORIZON", raising=False)


def _keys(partitions: dg.TimeWindowPartitionsDefinition, at: datetime) -> list[str]:
    return partitions.get_partition_keys(current_time=at)


def test_every_key_a_server_loaded_before_midnight_offers_resolves_in_a_worker_after_it():
    server = build_minute_partitions(SERVER_LOADED)
    offered = _keys(server, WORKER_STARTS)  # what its UI, sensors and backfills can hand out at 00:01
    for worker_at in (WORKER_STARTS, SERVER_LOADED + SERVER_GRACE):
        worker = build_minute_partitions(worker_at, worker=True)
        known = set(_keys(worker, worker_at))
        missing = [key for key in offered if key not in known]
        assert missing == [], f"worker at {worker_at} does not know {len(missing)} server keys, first {missing[:1]}"

    # The bug this replaces: both sides computing the same formula at their own time disagree.
    same_formula = set(_keys(build_minute_partitions(WORKER_STARTS), WORKER_STARTS))
    assert offered[0] not in same_formula
    # The server itself still offers every window inside the 32-day horizon.
    assert server.start <= SERVER_LOADED - timedelta(days=32)


def test_a_reconstructed_code_location_starts_earlier_than_a_first_load():
    """The worker side is chosen by Dagster's own load context, as in a run worker:
    the run worker rebuilds the repository from its code pointer (RECONSTRUCTION)."""
    plain = "from billing_assets.defs.partitions import minute_partitions as m; print(m.start.isoformat())"
    reconstructed = (
        "from dagster._core.definitions.reconstruct import ReconstructableRepository\n"
        "ReconstructableRepository.for_module('billing_assets.definitions', 'defs').get_definition()\n" + plain
    )
    starts = []
    for code in (plain, reconstructed):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        starts.append(datetime.fromisoformat(result.stdout.strip().splitlines()[-1]))
    first_load, worker = starts
    # The two loads straddle midnight at most by the seconds between them.
    assert timedelta(days=1) < first_load - worker <= SERVER_GRACE


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_run_of_a_window_older_than_the_horizon_is_refused_and_writes_nothing(billing_env, recent_hour, monkeypatch):
    billing_env.fleet.start("old-1", billing_start=recent_hour - timedelta(hours=1), users=2)
    billing_env.write_registry()
    billing_env.sync_partitions()
    # The window is a valid partition key (the space reaches back past the horizon),
    # but 3 hours old against a 2-hour horizon.
    monkeypatch.setenv("BILLING_DEDUP_HORIZON", "2h")
    result = materialize_range(defs, billing_env.instance(), "old-1", recent_hour, recent_hour + 2 * MINUTE,
                               raise_on_error=False, log_level="CRITICAL")
    assert not result.success
    failures = [event for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failures and failures[0].step_key == "exporter_snapshots"
    message = failures[0].step_failure_data.error.message
    assert "source 'old-1'" in message and "is older than the dedup horizon" in message
    assert "nothing fetched or written" in message and "partition key" not in message.lower()
    with billing_env.engine.connect() as connection:
        for table in ("exporter_pages", "exporter_snapshot_rows", "usage_samples", "usage_minute_buckets", "billing_ledger"):
            assert connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar() == 0, table
