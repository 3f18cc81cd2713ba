"""Launching billing runs from Python: a (source, range) as one Dagster run.

This is exactly what a single-run backfill does (range tags on the implicit
asset job), so the demo, tests and the benchmark exercise the production path.
"""

from __future__ import annotations

from datetime import datetime

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from billing_assets.core.timeutil import MINUTE
from billing_assets.defs.partitions import partition_key

BILLING_ASSETS = ["exporter_snapshots", "usage_samples", "usage_minute_buckets", "billing_ledger"]


def range_tags(source_id: str, start: datetime, end: datetime) -> dict[str, str]:
    """Tags for minutes [start, end) of one source (Dagster ranges are inclusive)."""
    return {
        ASSET_PARTITION_RANGE_START_TAG: partition_key(start, source_id),
        ASSET_PARTITION_RANGE_END_TAG: partition_key(end - MINUTE, source_id),
    }


def materialize_range(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    source_id: str,
    start: datetime,
    end: datetime,
    raise_on_error: bool = True,
    tags: dict[str, str] | None = None,
    log_level: str = "INFO",
) -> dg.ExecuteInProcessResult:
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        asset_selection=[dg.AssetKey(name) for name in BILLING_ASSETS],
        instance=instance,
        tags={**range_tags(source_id, start, end), **(tags or {})},
        raise_on_error=raise_on_error,
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
    )
