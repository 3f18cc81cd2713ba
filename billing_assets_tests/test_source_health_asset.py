"""The `source_health` asset and its checks, materialized through a real run.

It is what the UI shows for lag and gaps, so a lagging source must turn the
freshness check red and a hole before the checkpoint must turn completeness
red, while a healthy fleet leaves both green.
"""

from __future__ import annotations

from datetime import timedelta

from billing_assets.core.timeutil import floor_minute, now_utc
from billing_assets.definitions import defs


def _health_run(env):
    job = defs.resolve_job_def("source_health_job")
    result = job.execute_in_process(instance=env.instance(), raise_on_error=False)
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    [materialization] = result.get_asset_materialization_events()
    return checks, materialization.step_materialization_data.materialization.metadata


def test_health_asset_checks_follow_lag_and_gaps(billing_env):
    now = floor_minute(now_utc())
    start = now - timedelta(hours=2)
    billing_env.fleet.start("fresh-1", billing_start=start, users=2)
    billing_env.write_registry()
    billing_env.fetch("fresh-1", start, now - timedelta(minutes=1))

    checks, metadata = _health_run(billing_env)
    assert checks["source_freshness"].passed and checks["source_completeness"].passed
    assert metadata["fresh-1 lag_s"].value < 600 and metadata["fresh-1 missing_windows"].value <= 1

    billing_env.fleet.start("stale-1", billing_start=start, users=2, seed=2)
    billing_env.write_registry()
    # First collection started 30 minutes after billing_start: those minutes are a hole
    # before the checkpoint, and the checkpoint (start + 40 min) is far behind now.
    billing_env.fetch("stale-1", start + timedelta(minutes=30), start + timedelta(minutes=40))

    checks, metadata = _health_run(billing_env)
    assert not checks["source_freshness"].passed
    assert "stale-1" in checks["source_freshness"].description and "fresh-1" not in checks["source_freshness"].description
    assert not checks["source_completeness"].passed
    assert "stale-1" in checks["source_completeness"].description
    assert checks["source_completeness"].metadata["stale-1 missing_windows"].value >= 28
    assert metadata["stale-1 missing_windows"].value > 60
