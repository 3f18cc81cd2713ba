"""Turning samples into per-minute usage buckets.

A bucket's usage is the sum of the deltas of the samples collected inside its
minute, and a sample's delta depends on the sample before it. That is why the
caller passes, besides the window's samples, the last sample *before* the
window of every series (the baselines): without them the first sample of each
series in the window would be charged in full.

This function computes buckets on SQLite, and it is the reference the
PostgreSQL statement (storage/buckets_in_database.py) is tested against.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from billing_assets.core.counters import counter_deltas

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


def compute_minute_buckets(
    samples: pd.DataFrame, baselines: pd.DataFrame, billing_start: datetime
) -> pd.DataFrame:
    """Minute buckets for the window covered by `samples`.

    `samples` holds every deduplicated sample of the window, `baselines` at most
    one sample per series from before the window. Samples collected before
    `billing_start` only set the baseline of the next one (delta forced to 0),
    so turning billing on never charges the history of a counter.
    """
    if samples.empty:
        return empty_buckets()
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
    for direction in ("uplink", "downlink"):
        total = rows[f"{direction}_bytes_total"].astype("int64")
        previous = grouped[f"{direction}_bytes_total"].shift(1, fill_value=0).astype("int64")
        delta = counter_deltas(previous.to_numpy(), total.to_numpy(), has_previous)
        delta[before_billing] = 0
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
    return buckets[BUCKET_COLUMNS]
