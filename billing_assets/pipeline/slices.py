"""A run's work, as contiguous (source, [start, end)) slices."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from billing_assets.core.timeutil import MINUTE


@dataclass(frozen=True)
class Slice:
    source_id: str
    start: datetime
    end: datetime

    @property
    def minutes(self) -> int:
        return int((self.end - self.start) // MINUTE)

    def chunks(self, size: timedelta) -> Iterator["Slice"]:
        """Sub-slices of at most `size`, so memory is bounded by chunk, not range."""
        cursor = self.start
        while cursor < self.end:
            end = min(self.end, cursor + size)
            yield Slice(self.source_id, cursor, end)
            cursor = end


def merge_minutes(pairs: Iterable[tuple[str, datetime]]) -> list[Slice]:
    """Group (source, minute start) pairs into maximal contiguous slices."""
    by_source: dict[str, list[datetime]] = {}
    for source_id, minute in pairs:
        by_source.setdefault(source_id, []).append(minute)
    slices: list[Slice] = []
    for source_id in sorted(by_source):
        minutes = sorted(set(by_source[source_id]))
        start = previous = minutes[0]
        for minute in minutes[1:]:
            if minute != previous + MINUTE:
                slices.append(Slice(source_id, start, previous + MINUTE))
                start = minute
            previous = minute
        slices.append(Slice(source_id, start, previous + MINUTE))
    return slices
