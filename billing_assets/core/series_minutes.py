"""Minute usage per integer series in numpy: the bucket rule on whole columns.

`core.buckets.derive_minute_usage` states the rule on pandas frames keyed by
the four contract columns of a series; grouping 300 k rows by four strings is
what made it too slow for PostgreSQL's source-hours, which therefore ran it
as one SQL window statement (1.2-1.3 s of server CPU per source-hour,
bench/RESULTS.md round 12). Keyed by the dictionary's integer `series_id`,
the same rule is a sort and a few vector operations: the window's samples
come out of PostgreSQL as four packed columns (0.12 s of server CPU) and are
derived here in ~50 ms. It is held to `derive_minute_usage` by hypothesis
(test_series_minutes.py), and through the database by
test_buckets_in_database.py.

The rule, as in `core.counters` / `core.plausibility`: a series' first sample
or a drop counts in full, otherwise the growth; samples before billing_start
only set the baseline; a delta above rate x elapsed is held unless an
operator released exactly that sample and amount. A bucket is the sum of the
deltas of the samples collected in its minute, its count, and the email of
its last sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from billing_assets.core.counters import counter_deltas
from billing_assets.core.plausibility import bounds

MINUTE_US = 60_000_000
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class SeriesSamples:
    """Stored samples as columns; at most one per (series_id, collected_us), in any order."""

    series_id: np.ndarray  # int64
    collected_us: np.ndarray  # int64 microseconds since the Unix epoch
    uplink_total: np.ndarray  # int64, non-negative
    downlink_total: np.ndarray

    def __len__(self) -> int:
        return len(self.series_id)

    @classmethod
    def empty(cls) -> SeriesSamples:
        return cls(*(np.empty(0, dtype=np.int64) for _ in range(4)))


@dataclass(frozen=True)
class SeriesHolds:
    """Window samples whose delta is held back; `row` indexes the window as given."""

    row: np.ndarray
    uplink: np.ndarray  # held bytes per direction (0 where that direction was plausible)
    downlink: np.ndarray
    elapsed_us: np.ndarray  # -1 for a series' first sample (no previous one)
    bound: np.ndarray

    def __len__(self) -> int:
        return len(self.row)


@dataclass(frozen=True)
class SeriesMinutes:
    """A window's buckets ordered by (series_id, minute), and its holds."""

    series_id: np.ndarray
    bucket_us: np.ndarray
    uplink_bytes: np.ndarray
    downlink_bytes: np.ndarray
    sample_count: np.ndarray
    last_row: np.ndarray  # the minute's last sample, an index into the window as given (its email)
    held: SeriesHolds

    def __len__(self) -> int:
        return len(self.series_id)


Release = tuple[int, int, int, int]  # (series_id, collected_us, held uplink, held downlink)


def derive_series_minutes(
    window: SeriesSamples,
    baselines: SeriesSamples,
    billing_start_us: int,
    max_bytes_per_second: int | None = None,
    released: frozenset[Release] | set[Release] = frozenset(),
) -> SeriesMinutes:
    """Buckets of `window`, given each series' last sample before it in `baselines`.

    Raises OverflowError should a bucket's sum pass int64 (only released holds
    can get there; every other delta is bounded by the plausibility rate).
    """
    n_window = len(window)
    rows = {
        name: np.concatenate([getattr(baselines, name), getattr(window, name)]).astype(np.int64, copy=False)
        for name in ("series_id", "collected_us", "uplink_total", "downlink_total")
    }
    source_row = np.concatenate([np.full(len(baselines), -1, dtype=np.int64), np.arange(n_window, dtype=np.int64)])
    order = np.lexsort((rows["collected_us"], rows["series_id"]))
    series, at = rows["series_id"][order], rows["collected_us"][order]
    up, down, source_row = rows["uplink_total"][order], rows["downlink_total"][order], source_row[order]

    has_previous = np.zeros(len(series), dtype=bool)
    has_previous[1:] = series[1:] == series[:-1]
    deltas = []
    for total in (up, down):
        previous = np.zeros_like(total)
        previous[1:] = total[:-1]
        delta = counter_deltas(previous, total, has_previous)
        delta[at < billing_start_us] = 0
        deltas.append(delta)
    d_up, d_down = deltas
    in_window = source_row >= 0

    held = _no_holds()
    if max_bytes_per_second is not None:
        held = _hold_implausible(series, at, has_previous, in_window, source_row, d_up, d_down, max_bytes_per_second, released)

    keep = np.flatnonzero(in_window)
    series, minute, d_up, d_down, source_row = series[keep], np.floor_divide(at[keep], MINUTE_US), d_up[keep], d_down[keep], source_row[keep]
    if len(keep) == 0:
        empty = np.empty(0, dtype=np.int64)
        return SeriesMinutes(empty, empty, empty, empty, empty, empty, held)
    first = np.ones(len(keep), dtype=bool)
    first[1:] = (series[1:] != series[:-1]) | (minute[1:] != minute[:-1])
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], len(keep))
    return SeriesMinutes(
        series_id=series[starts],
        bucket_us=minute[starts] * MINUTE_US,
        uplink_bytes=_sums(d_up, starts),
        downlink_bytes=_sums(d_down, starts),
        sample_count=ends - starts,
        last_row=source_row[ends - 1],
        held=held,
    )


def _sums(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per-bucket sums; numpy would wrap around past int64, so that is checked in floating point."""
    sums = np.add.reduceat(values, starts)
    if len(values) and np.add.reduceat(values.astype(np.float64), starts).max() >= _INT64_MAX:
        raise OverflowError("a minute bucket's usage exceeds int64 (released holds too large to sum)")
    return sums


def _no_holds() -> SeriesHolds:
    empty = np.empty(0, dtype=np.int64)
    return SeriesHolds(empty, empty, empty, empty, empty)


def _hold_implausible(series, at, has_previous, in_window, source_row, d_up, d_down, rate, released) -> SeriesHolds:
    """Zero the implausible deltas in `d_up`/`d_down` (in place) unless released; return the holds."""
    elapsed = np.zeros(len(at), dtype=np.int64)
    elapsed[1:] = at[1:] - at[:-1]
    bound = bounds(rate, elapsed, has_previous)
    over_up = (d_up > bound) & in_window
    over_down = (d_down > bound) & in_window
    candidates = np.flatnonzero(over_up | over_down)
    if candidates.size == 0:
        return _no_holds()
    held_up = np.where(over_up[candidates], d_up[candidates], 0)
    held_down = np.where(over_down[candidates], d_down[candidates], 0)
    kept = np.array([
        (int(series[i]), int(at[i]), int(u), int(d)) not in released
        for i, u, d in zip(candidates.tolist(), held_up.tolist(), held_down.tolist())
    ], dtype=bool)  # fmt: skip
    candidates, held_up, held_down = candidates[kept], held_up[kept], held_down[kept]
    d_up[candidates] -= held_up
    d_down[candidates] -= held_down
    return SeriesHolds(
        row=source_row[candidates],
        uplink=held_up,
        downlink=held_down,
        elapsed_us=np.where(has_previous[candidates], elapsed[candidates], -1),
        bound=bound[candidates],
    )
