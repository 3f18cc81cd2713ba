"""The partition space: (minute window, exporter source), shared by every asset.

The minute dimension starts at a rolling point computed when the definitions
load, floored to a day so it moves once a day. Two processes load them at
different times: the long-lived code server (which offers keys to the UI,
sensors and backfills) and each fresh run worker (which resolves the run's keys
again). They must agree, so the start depends on who loads:

- a code server (or any first load) starts at `floor_day(now - horizon)`, so
  every window still inside the dedup horizon can be (re)materialized;
- a run worker (Dagster reconstructs the definitions there) starts `grace`
  (2 days) earlier, so it knows every key a code server loaded up to 2 days
  ago can offer: `floor_day(T_worker - horizon - grace) <= floor_day(T_server - horizon)`
  whenever `T_worker - T_server <= grace`.

Keys of the partition space that are older than the horizon (a server's first
day after midnight, a worker's extra grace) are not billable: the steps refuse
such windows with a clear error and write nothing (`run_slices`), which is what
keeps forgetting and pruning old sample identities safe. Sensors, reconcile and
status begin one day inside the horizon (`earliest_window`), so what they
request is still billable when the run starts. Set `BILLING_PARTITIONS_START`
to pin the start for every process (the benchmark does).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import dagster as dg

from billing_assets.defs.dagster_internals import loading_in_run_worker
from billing_assets.core.timeutil import MINUTE_KEY_FORMAT, format_rfc3339, now_utc, parse_minute_key
from billing_assets.pipeline.slices import Slice, merge_minutes
from billing_assets.settings import Settings

SOURCES_PARTITION = "exporter_sources"
# The longest a code server may run without reloading its definitions and still
# agree with fresh run workers (docs/operations.md: reload daily).
SERVER_GRACE = timedelta(days=2)


def dedup_horizon() -> timedelta:
    """`BILLING_DEDUP_HORIZON` as `BillingStore.horizon()` reads it, for code that has no resource."""
    return Settings.from_env().dedup_horizon


def _floor_day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def partitions_start(now: datetime | None = None, *, worker: bool = False) -> str:
    """First minute key of the partition space for a process loading definitions at `now`."""
    pinned = Settings.from_env().partitions_start
    if pinned:
        return pinned
    start = _floor_day((now or now_utc()) - dedup_horizon())
    if worker:
        start -= SERVER_GRACE
    return start.strftime(MINUTE_KEY_FORMAT)


def build_minute_partitions(now: datetime | None = None, *, worker: bool = False) -> dg.TimeWindowPartitionsDefinition:
    return dg.TimeWindowPartitionsDefinition(
        cron_schedule="* * * * *", fmt=MINUTE_KEY_FORMAT, start=partitions_start(now, worker=worker), timezone="UTC", end_offset=0
    )


def earliest_window(now: datetime | None = None) -> datetime:
    """The first minute sensors, reconcile and status consider: one day inside the horizon.

    A day of margin so a requested window is still inside the horizon when its
    (queued) run starts; never before a pinned partitions start.
    """
    earliest = _floor_day((now or now_utc()) - dedup_horizon()) + timedelta(days=1)
    return max(earliest, minute_partitions.start)


minute_partitions = build_minute_partitions(worker=loading_in_run_worker())
source_partitions = dg.DynamicPartitionsDefinition(name=SOURCES_PARTITION)
billing_partitions = dg.MultiPartitionsDefinition({"minute": minute_partitions, "source": source_partitions})


def partition_key(minute: datetime, source_id: str) -> str:
    return dg.MultiPartitionKey({"minute": minute.strftime(MINUTE_KEY_FORMAT), "source": source_id})


def key_parts(key: str) -> tuple[str, datetime]:
    """(source, minute) of a (minute, source) partition key, a `MultiPartitionKey` or its `minute|source` string."""
    dims = key.keys_by_dimension if isinstance(key, dg.MultiPartitionKey) else dict(zip(("minute", "source"), str(key).split("|")))
    return dims["source"], parse_minute_key(dims["minute"])


def run_slices(context: dg.AssetExecutionContext, now: datetime | None = None) -> list[Slice]:
    """The (source, window) slices of this run, whether one key or a range.

    Refuses the run when a window starts before the dedup horizon: its sample
    identities may be forgotten (pruned), so a re-delivery could no longer be
    recognised and would bill again.
    """
    slices = merge_minutes([key_parts(key) for key in context.partition_keys])
    try:
        horizon = context.resources.billing.horizon()
    except Exception:  # noqa: BLE001 - a step without the resource falls back to the environment, as the resource does
        horizon = dedup_horizon()
    refuse_beyond_horizon(slices, horizon, now or now_utc())
    return slices


def refuse_beyond_horizon(slices: list[Slice], horizon: timedelta, now: datetime) -> None:
    cutoff = (now - horizon).replace(microsecond=0)
    old = [work for work in slices if work.start < cutoff]
    if old:
        work = old[0]
        raise dg.Failure(
            description=(
                f"source {work.source_id!r}: window [{format_rfc3339(work.start)}, {format_rfc3339(work.end)}) "
                f"is older than the dedup horizon ({horizon} before now: {format_rfc3339(cutoff)}); "
                "nothing fetched or written for this run. Windows that old cannot be billed again."
            ),
            allow_retries=False,
        )
