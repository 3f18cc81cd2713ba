"""The partition space: (minute window, exporter source), shared by every asset.

The minute dimension starts at a rolling point bounded by the dedup horizon
(floored to a day so the definition changes once a day, not every minute):
windows older than the horizon cannot be (re)materialized, which is what makes
forgetting old sample identities safe. Set `BILLING_PARTITIONS_START` to pin it.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

import dagster as dg

from billing_assets.core.timeutil import MINUTE_KEY_FORMAT, now_utc, parse_minute_key
from billing_assets.pipeline.dedup import DEFAULT_DEDUP_HORIZON
from billing_assets.pipeline.slices import Slice, merge_minutes

SOURCES_PARTITION = "exporter_sources"


def partitions_start(now: datetime | None = None) -> str:
    pinned = os.environ.get("BILLING_PARTITIONS_START")
    if pinned:
        return pinned
    start = (now or now_utc()) - DEFAULT_DEDUP_HORIZON + timedelta(days=1)
    return start.strftime("%Y-%m-%d-00:00")


minute_partitions = dg.TimeWindowPartitionsDefinition(
    cron_schedule="* * * * *", fmt=MINUTE_KEY_FORMAT, start=partitions_start(), timezone="UTC", end_offset=0
)
source_partitions = dg.DynamicPartitionsDefinition(name=SOURCES_PARTITION)
billing_partitions = dg.MultiPartitionsDefinition({"minute": minute_partitions, "source": source_partitions})


def partition_key(minute: datetime, source_id: str) -> str:
    return dg.MultiPartitionKey({"minute": minute.strftime(MINUTE_KEY_FORMAT), "source": source_id})


def run_slices(context: dg.AssetExecutionContext) -> list[Slice]:
    """The (source, window) slices of this run, whether one key or a range."""
    pairs = []
    for key in context.partition_keys:
        dims = key.keys_by_dimension if isinstance(key, dg.MultiPartitionKey) else dict(
            zip(("minute", "source"), str(key).split("|"))
        )
        pairs.append((dims["source"], parse_minute_key(dims["minute"])))
    return merge_minutes(pairs)
