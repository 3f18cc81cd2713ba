"""Which minute windows of a source are due, from its checkpoint: O(1) per source.

The checkpoint's `last_successful_until` is a contiguous high-water mark, so
everything before it has been collected once; what is due is [high water,
last closed minute), re-reading `overlap` before it. Ranges are capped at
`max_range`, so catching up after an outage takes a few large runs instead of
one per minute or one enormous one. Pure: no instance, no database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from billing_assets.core.timeutil import MINUTE, ceil_minute, floor_minute


@dataclass(frozen=True)
class DueRange:
    start: datetime
    end: datetime
    new_from: datetime
    """Where the not-yet-collected part starts (start + overlap, unless clamped)."""

    @property
    def minutes(self) -> int:
        return int((self.end - self.start) // MINUTE)


def due_range(
    *,
    high_water: datetime | None,
    billing_start: datetime,
    partitions_start: datetime,
    now: datetime,
    lag: timedelta,
    overlap: timedelta,
    max_range: timedelta,
    min_new: timedelta = MINUTE,
) -> DueRange | None:
    """The next range to request, or None when fewer than `min_new` windows are due."""
    earliest = max(floor_minute(billing_start), ceil_minute(partitions_start))
    closed_until = floor_minute(now - lag)
    new_from = max(floor_minute(high_water), earliest) if high_water else earliest
    if closed_until - new_from < max(min_new, MINUTE):
        return None
    start = max(earliest, new_from - ceil_minute_delta(overlap))
    end = min(closed_until, start + max(floor_delta(max_range), MINUTE + ceil_minute_delta(overlap)))
    return DueRange(start, end, new_from)


def ceil_minute_delta(value: timedelta) -> timedelta:
    return -((-value) // MINUTE) * MINUTE


def floor_delta(value: timedelta) -> timedelta:
    return (value // MINUTE) * MINUTE


def retry_after(last_requested: datetime | None, failures: int, interval: timedelta, max_backoff: timedelta) -> datetime | None:
    """When a failing source may be tried again: exponential backoff on its interval."""
    if not failures or last_requested is None:
        return None
    return last_requested + min(interval * (2 ** min(failures - 1, 20)), max_backoff)
