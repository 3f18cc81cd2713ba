"""Each minute partition's materialization carries that minute's own figures.

A range run materializes every minute of its range in one step, and Dagster
copies the step's metadata onto each minute: a minute of a 10-minute run
used to read "minutes 10, samples 1400", the run's figures, which an
operator reads as the minute's. Now the step's shared metadata says what is
the run's (`run_…`), and each minute gets its own samples, buckets, bytes
and amount from one grouped query per slice (`storage/minute_figures.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import dagster as dg

from billing_assets.core.timeutil import format_rfc3339, now_utc
from billing_assets.defs.dagster_internals import add_partition_metadata
from billing_assets.defs.partitions import key_parts
from billing_assets.pipeline.slices import Slice

MinuteFigures = Callable[[Slice, Any], Mapping[datetime, Mapping[str, Any]]]


def run_metadata(results: list[tuple[Slice, Any]], totals: Mapping[str, int], now: datetime | None = None) -> dict[str, Any]:
    """What the whole run did, under names that say so (every minute shows these too)."""
    slices = [work for work, _ in results]
    if not slices:
        return {}
    end = max(work.end for work in slices)
    return {
        "run_sources": ", ".join(sorted({work.source_id for work in slices})),
        "run_window": f"[{format_rfc3339(min(work.start for work in slices))}, {format_rfc3339(end)})",
        "run_minutes": sum(work.minutes for work in slices),
        **{f"run_{name}": value for name, value in totals.items()},
        "lag_seconds": round(((now or now_utc()) - end).total_seconds(), 1),
    }


def attach_minute_figures(
    context: dg.AssetExecutionContext,
    results: list[tuple[Slice, Any]],
    figures: MinuteFigures,
    empty: Mapping[str, Any],
) -> int:
    """Give every key of the run its minute's figures (`empty` where the minute has none); returns the key count."""
    by_source: dict[str, dict[datetime, Mapping[str, Any]]] = {}
    for work, stats in results:
        by_source.setdefault(work.source_id, {}).update(figures(work, stats))
    per_key: dict[str, Mapping[str, Any]] = {}
    for key in context.partition_keys:
        source_id, minute = key_parts(key)
        if source_id in by_source:
            per_key[str(key)] = by_source[source_id].get(minute, empty)
    add_partition_metadata(context, per_key)
    return len(per_key)
