"""Launching the downstream run for a range of hours, as `--partition-range` would.

One run per contiguous range (the assets' single-run backfill policy), with
the operator's force tags when given: the CLI, the demo and the tests go
through the same tags the sensor and `dagster asset materialize` use.
"""

from __future__ import annotations

from datetime import datetime

import dagster as dg

from billing_assets.defs.downstream.partitions import FORCE_TAG, OPERATOR_TAG, REASON_TAG, REMITTANCE_TAG, range_tags

DOWNSTREAM_ASSETS = ["hourly_usage", "remittance"]


def force_tags(reason: str, operator: str) -> dict[str, str]:
    return {FORCE_TAG: "true", REASON_TAG: reason, OPERATOR_TAG: operator}


def materialize_hours(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    first: datetime,
    last: datetime,
    tags: dict[str, str] | None = None,
    raise_on_error: bool = False,
    log_level: str = "WARNING",
) -> dg.ExecuteInProcessResult:
    """Hours first..last (inclusive) of hourly_usage + remittance, in this process."""
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        asset_selection=[dg.AssetKey(name) for name in DOWNSTREAM_ASSETS],
        instance=instance,
        tags={**range_tags(first, last), REMITTANCE_TAG: "true", **(tags or {})},
        raise_on_error=raise_on_error,
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
    )
