"""Turning samples into per-minute usage buckets.

A bucket's usage is the sum of the deltas of the samples collected inside its
minute, and a sample's delta depends on the sample before it. That is why the
caller passes, besides the window's samples, the last sample *before* the
window of every series (the baselines): without them the first sample of each
series in the window would be charged in full.

This function computes buckets on SQLite, and it is the reference the
numpy rule PostgreSQL's step runs (core/series_minutes.py) is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from billing_assets.core.counters import counter_deltas
from billing_assets.core.plausibility import bounds

SERIES = ["node_id", "env", "uuid", "inbound_tag"]
BUCKET_KEY = [*SERIES, "bucket_start"]
SAMPLE_COLUMNS = [*SERIES, "collected_at", "email", "uplink_bytes_total", "downlink_bytes_total"]
BUCKET_COLUMNS = [*BUCKET_KEY, "email", "uplink_bytes", "downlink_bytes", "sample_count"]


def empty_buckets() -> pd.DataFrame:
    frame = pd.DataFrame({column: pd.Series(dtype="object") for column in BUCKET_COLUMNS})
    frame["bucket_start"] = pd.Series(dtype="datetime64[us, UTC]")
    for column in ("uplink_bytes", "downlink_bytes", "sample_count"):
        frame[column] = pd.Series(dtype="int64")
    return frame


HELD_COLUMNS = [*SERIES, "collected_at", "held_uplink_bytes", "held_downlink_bytes", "elapsed_us", "bound_bytes"]
RELEASED_COLUMNS = [*SERIES, "collected_at", "held_uplink_bytes", "held_downlink_bytes"]


@dataclass(frozen=True)
class MinuteUsage:
    """A window's buckets and the sample deltas held back from them (core.plausibility)."""

    buckets: pd.DataFrame
    held: pd.DataFrame


def empty_held() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype="object") for column in HELD_COLUMNS})


def compute_minute_buckets(
    samples: pd.DataFrame, baselines: pd.DataFrame, billing_start: datetime, **plausibility
) -> pd.DataFrame:
    """Minute buckets only; see `derive_minute_usage`."""
    return derive_minute_usage(samples, baselines, billing_start, **plausibility).buckets


def derive_minute_usage(
    samples: pd.DataFrame,
    baselines: pd.DataFrame,
    billing_start: datetime,
    max_bytes_per_second: int | None = None,
    released: pd.DataFrame | None = None,
) -> MinuteUsage:
    """Minute buckets for the window covered by `samples`, and what was held.

    `samples` holds every deduplicated sample of the window, `baselines` at most
    one sample per series from before the window. Samples collected before
    `billing_start` only set the baseline of the next one (delta forced to 0),
    so turning billing on never charges the history of a counter.

    With `max_bytes_per_second`, a delta above the plausibility bound is held
    (counted 0 and listed in `held`) unless `released` (RELEASED_COLUMNS) holds
    exactly that sample and amount: an operator's release bills the amount
    they saw, and a later, different delta of the same sample is held anew.
    """
    if samples.empty:
        return MinuteUsage(empty_buckets(), empty_held())
    window = samples[SAMPLE_COLUMNS].assign(_baseline=False)
    frames = [window]
    if not baselines.empty:
        frames.insert(0, baselines[SAMPLE_COLUMNS].assign(_baseline=True))
    rows = pd.concat(frames, ignore_index=True)
    rows["collected_at"] = pd.to_datetime(rows["collected_at"], utc=True)
    rows = rows.sort_values([*SERIES, "collected_at", "_baseline"], ascending=[True] * 5 + [False], kind="stable")
    rows = rows.drop_duplicates([*SERIES, "collected_at"], keep="first")

    grouped = rows.groupby(SERIES, sort=False, dropna=False)
    has_previous = (grouped.cumcount() > 0).to_numpy()
    before_billing = (rows["collected_at"] < pd.Timestamp(billing_start)).to_numpy()
    deltas = {}
    for direction in ("uplink", "downlink"):
        total = rows[f"{direction}_bytes_total"].astype("int64")
        previous = grouped[f"{direction}_bytes_total"].shift(1, fill_value=0).astype("int64")
        delta = counter_deltas(previous.to_numpy(), total.to_numpy(), has_previous)
        delta[before_billing] = 0
        deltas[direction] = delta
    held = empty_held()
    if max_bytes_per_second is not None:
        held = _hold_implausible(rows, grouped, has_previous, deltas, max_bytes_per_second, released)
    for direction, delta in deltas.items():
        rows[f"{direction}_bytes"] = delta

    charged = rows[~rows["_baseline"].to_numpy()].copy()
    charged["bucket_start"] = charged["collected_at"].dt.floor("min")
    buckets = (
        charged.groupby(BUCKET_KEY, sort=True, dropna=False)
        .agg(
            email=("email", "last"),
            uplink_bytes=("uplink_bytes", "sum"),
            downlink_bytes=("downlink_bytes", "sum"),
            sample_count=("collected_at", "size"),
        )
        .reset_index()
    )
    return MinuteUsage(buckets[BUCKET_COLUMNS], held)


def _hold_implausible(rows, grouped, has_previous, deltas, rate: int, released: pd.DataFrame | None) -> pd.DataFrame:
    """Zero the implausible deltas of window samples in `deltas` (in place); return the holds."""
    at = rows["collected_at"]
    previous_at = grouped["collected_at"].shift(1)
    elapsed_us = ((at - previous_at).fillna(pd.Timedelta(0)) // pd.Timedelta(microseconds=1)).to_numpy(dtype="int64")
    bound = bounds(rate, elapsed_us, has_previous)
    in_window = ~rows["_baseline"].to_numpy()
    over = {direction: (delta > bound) & in_window for direction, delta in deltas.items()}
    candidates = np.flatnonzero(over["uplink"] | over["downlink"])
    if candidates.size == 0:
        return empty_held()
    up = np.where(over["uplink"], deltas["uplink"], 0)
    down = np.where(over["downlink"], deltas["downlink"], 0)
    releases = set()
    if released is not None and not released.empty:
        times = pd.to_datetime(released["collected_at"], utc=True)
        releases = set(
            zip(*(released[c].tolist() for c in SERIES), times.tolist(),
                released["held_uplink_bytes"].astype("int64").tolist(), released["held_downlink_bytes"].astype("int64").tolist())
        )
    series = rows[SERIES].to_numpy()
    holds = []
    for i in candidates.tolist():
        key = (*series[i].tolist(), at.iloc[i], int(up[i]), int(down[i]))
        if key in releases:
            continue
        deltas["uplink"][i] -= up[i]
        deltas["downlink"][i] -= down[i]
        holds.append((*key, int(elapsed_us[i]) if has_previous[i] else None, int(bound[i])))
    return pd.DataFrame(holds, columns=HELD_COLUMNS) if holds else empty_held()
