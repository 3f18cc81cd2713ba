"""Billing runs: the tags that tie a run to one source, range requests, and in-process launches.

`billing/source` is what `tag_concurrency_limits` in deploy/dagster.yaml keys
on (one run per source at a time), and what the sensors check so they never
request a range while the previous one is still queued or running. A range of
one source is one run: the range tags on the implicit asset job are exactly
what a single-run backfill sets, so the demo, tests and the benchmark
exercise the production path.
"""

from __future__ import annotations

from datetime import datetime

import dagster as dg

from billing_assets.core.timeutil import MINUTE, format_rfc3339
from billing_assets.defs.dagster_internals import RANGE_END_TAG, RANGE_START_TAG, UNFINISHED_RUN_STATUSES, hold_instance_connections
from billing_assets.defs.partitions import partition_key

BILLING_ASSETS = ["exporter_snapshots", "usage_samples", "usage_minute_buckets", "billing_ledger"]
SOURCE_TAG = "billing/source"
TRIGGER_TAG = "billing/trigger"


def source_tags(source_id: str, trigger: str) -> dict[str, str]:
    return {SOURCE_TAG: source_id, TRIGGER_TAG: trigger}


def range_tags(source_id: str, start: datetime, end: datetime) -> dict[str, str]:
    """Tags for minutes [start, end) of one source (Dagster ranges are inclusive)."""
    return {RANGE_START_TAG: partition_key(start, source_id), RANGE_END_TAG: partition_key(end - MINUTE, source_id)}


def range_request(source_id: str, start: datetime, end: datetime, trigger: str) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"{trigger}:{source_id}:{format_rfc3339(start)}:{format_rfc3339(end)}",
        tags={**range_tags(source_id, start, end), **source_tags(source_id, trigger)},
    )


def source_of_run(tags: dict[str, str]) -> str | None:
    """The one source a run's Dagster partition tags name, or None (several, or none).

    A single key carries `dagster/partition/source`; a single-run range carries
    `minute|source` keys at both ends (Dagster splits a multi-source backfill
    into one run per source, so both ends agree).
    """
    if tags.get(SOURCE_TAG):
        return tags[SOURCE_TAG]
    if tags.get("dagster/partition/source"):
        return tags["dagster/partition/source"]
    named = {
        tags[tag].rsplit("|", 1)[1]
        for tag in (RANGE_START_TAG, RANGE_END_TAG, "dagster/partition")
        if "|" in tags.get(tag, "")
    }
    return named.pop() if len(named) == 1 else None


def has_unfinished_run(instance: dg.DagsterInstance, source_id: str) -> bool:
    records = instance.get_run_records(
        filters=dg.RunsFilter(tags={SOURCE_TAG: source_id}, statuses=list(UNFINISHED_RUN_STATUSES)), limit=1
    )
    return bool(records)


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
    """Minutes [start, end) of one source as one in-process run (demo, tests, bench).

    The process is the run worker, so its instance holds its connections from
    the run's first event on, not only from the first step (`hold_instance_connections`).
    """
    hold_instance_connections(instance)
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        asset_selection=[dg.AssetKey(name) for name in BILLING_ASSETS],
        instance=instance,
        tags={**range_tags(source_id, start, end), **(tags or {})},
        raise_on_error=raise_on_error,
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
    )
