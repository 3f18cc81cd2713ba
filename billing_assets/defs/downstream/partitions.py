"""The hour partitions of the downstream assets, and the run tags that steer them.

Hours share the minute partitions' rolling start, so an hour can be
re-derived exactly as long as its minutes can be re-materialized.
"""

from __future__ import annotations

from datetime import datetime

import dagster as dg

from billing_assets.core.timeutil import MINUTE_KEY_FORMAT, parse_minute_key
from billing_assets.defs.partitions import partitions_start
from billing_assets.pipeline.hourly import Force

hour_partitions = dg.TimeWindowPartitionsDefinition(
    cron_schedule="0 * * * *", fmt=MINUTE_KEY_FORMAT, start=partitions_start(), timezone="UTC", end_offset=0
)

FORCE_TAG = "billing/force_complete"
REASON_TAG = "billing/reason"
OPERATOR_TAG = "billing/operator"
USER_TAG = "dagster/user"
REMITTANCE_TAG = "billing/remittance"
# Public tag names of a single-run partition range (what `--partition-range` sets).
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def hour_key(hour: datetime) -> str:
    return hour.strftime(MINUTE_KEY_FORMAT)


def run_hours(context) -> list[datetime]:
    return sorted(parse_minute_key(str(key)) for key in context.partition_keys)


def range_tags(first: datetime, last: datetime) -> dict[str, str]:
    """Tags for hours first..last inclusive, as one run."""
    return {RANGE_START_TAG: hour_key(first), RANGE_END_TAG: hour_key(last)}


class ForceTagError(ValueError):
    pass


def force_from_tags(tags: dict[str, str]) -> Force | None:
    """The operator's force, if the run carries one; a force without a reason is refused."""
    value = (tags.get(FORCE_TAG) or "").strip().lower()
    if value in ("", "false", "0", "no"):
        return None
    if value not in ("true", "1", "yes"):
        raise ForceTagError(f"run tag {FORCE_TAG}={tags.get(FORCE_TAG)!r}: expected 'true' or 'false'")
    reason = (tags.get(REASON_TAG) or "").strip()
    if not reason:
        raise ForceTagError(f"run tag {FORCE_TAG}=true needs {REASON_TAG}=<why>; nothing was forced")
    who = (tags.get(USER_TAG) or tags.get(OPERATOR_TAG) or "").strip() or "unknown (no dagster/user or billing/operator tag)"
    return Force(by=who, reason=reason)
