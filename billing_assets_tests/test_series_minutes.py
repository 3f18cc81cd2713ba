"""The numpy bucket rule per series id gives the pandas reference's answers.

`core.series_minutes` is what PostgreSQL's bucket step runs; `core.buckets`
is the reference (and SQLite's step). Both see the same generated histories
(resets, idle steps, several emails per minute, samples before billing_start,
implausible jumps, some released) with the window's samples in a shuffled
order, and must agree on every bucket, email and hold. No database here:
test_buckets_in_database.py holds the whole PostgreSQL step to the same rule.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_assets.core.buckets import RELEASED_COLUMNS, derive_minute_usage
from billing_assets.core.series_minutes import SeriesSamples, derive_series_minutes
from billing_assets.storage.times import epoch_micros, epoch_micros_of
from billing_assets_tests.support.histories import counter_histories, sample_frame, sample_rows, window_and_baselines

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)
SERIES_IDS = {("a", "in-1"): 7, ("a", "in-2"): 3, ("b", "in-1"): 12, ("b", "in-2"): 5, ("c", "in-1"): 1, ("c", "in-2"): 40}


def columns(rows) -> SeriesSamples:
    return SeriesSamples(
        np.array([SERIES_IDS[(r[2], r[3])] for r in rows], dtype=np.int64),
        np.array([epoch_micros_of(r[4]) for r in rows], dtype=np.int64),
        np.array([r[6] for r in rows], dtype=np.int64),
        np.array([r[7] for r in rows], dtype=np.int64),
    )


@settings(max_examples=300, deadline=None)
@given(
    counter_histories(T0, tags=("in-1", "in-2"), max_growth=10**12, per_series=14),
    st.integers(0, 5),
    st.integers(1, 6),
    st.integers(-60, 7 * 60),
    st.sampled_from([None, 10**6, 10**9, 10**10]),
    st.lists(st.booleans(), max_size=8),
    st.randoms(use_true_random=False),
)
def test_per_series_rule_equals_the_pandas_reference(history, first_minute, minutes, billing_offset_s, rate, releases, shuffle):
    rows = sample_rows(history)
    start = T0 + timedelta(minutes=first_minute)
    end = start + timedelta(minutes=minutes)
    billing_start = T0 + timedelta(seconds=billing_offset_s)
    inside, before = window_and_baselines(rows, start, end)
    shuffle.shuffle(inside)

    unreleased = derive_minute_usage(sample_frame(inside), sample_frame(before), billing_start, rate).held
    released = unreleased.loc[[i < len(releases) and releases[i] for i in range(len(unreleased))]][RELEASED_COLUMNS]
    expected = derive_minute_usage(sample_frame(inside), sample_frame(before), billing_start, rate, released)
    release_keys = {
        (SERIES_IDS[(r.uuid, r.inbound_tag)], epoch_micros_of(r.collected_at.to_pydatetime()), int(r.held_uplink_bytes), int(r.held_downlink_bytes))
        for r in released.itertuples()
    }
    got = derive_series_minutes(columns(inside), columns(before), epoch_micros_of(billing_start), rate, release_keys)

    by_id = {v: k for k, v in SERIES_IDS.items()}
    want = {
        (r.uuid, r.inbound_tag, epoch_micros_of(r.bucket_start.to_pydatetime())): (r.email, int(r.uplink_bytes), int(r.downlink_bytes), int(r.sample_count))
        for r in expected.buckets.itertuples()
    }
    have = {
        (*by_id[int(s)], int(b)): (inside[last][5], int(u), int(d), int(n))
        for s, b, u, d, n, last in zip(got.series_id, got.bucket_us, got.uplink_bytes, got.downlink_bytes, got.sample_count, got.last_row)
    }
    assert have == want
    assert list(zip(got.series_id.tolist(), got.bucket_us.tolist())) == sorted(zip(got.series_id.tolist(), got.bucket_us.tolist()))

    want_holds = {
        (r.uuid, r.inbound_tag, epoch_micros(pd.Series([r.collected_at]))[0], int(r.held_uplink_bytes), int(r.held_downlink_bytes),
         -1 if pd.isna(r.elapsed_us) else int(r.elapsed_us), int(r.bound_bytes))
        for r in expected.held.itertuples()
    }
    have_holds = {
        (inside[row][2], inside[row][3], epoch_micros_of(inside[row][4]), int(u), int(d), int(e), int(b))
        for row, u, d, e, b in zip(got.held.row.tolist(), got.held.uplink, got.held.downlink, got.held.elapsed_us, got.held.bound)
    }
    assert have_holds == want_holds


def test_an_empty_window_has_no_buckets():
    got = derive_series_minutes(SeriesSamples.empty(), SeriesSamples.empty(), 0, 10**9)
    assert len(got) == 0 and len(got.held) == 0


def test_released_holds_that_would_wrap_int64_raise_instead_of_billing_a_wrapped_sum():
    """Two released multi-exabyte holds in one minute: their sum would wrap to a negative charge."""
    base = epoch_micros_of(T0)
    huge = 2**62 + 1
    baselines = SeriesSamples(np.array([1]), np.array([base - 1_000_000]), np.array([0]), np.array([0]))

    def window(second_total):
        return SeriesSamples(
            np.array([1, 1]), np.array([base, base + 1_000_000]), np.array([huge, second_total]), np.array([0, 0])
        )

    # A reset to 0 after the first jump: one released hold, billed as released.
    assert derive_series_minutes(window(0), baselines, 0, 1, {(1, base, huge, 0)}).uplink_bytes.tolist() == [huge]
    # A reset to huge - 1: a second released hold; together 2**63, past int64.
    released = {(1, base, huge, 0), (1, base + 1_000_000, huge - 1, 0)}
    with pytest.raises(OverflowError):
        derive_series_minutes(window(huge - 1), baselines, 0, 1, released)
    # Unreleased, both are held and nothing is billed.
    held = derive_series_minutes(window(huge - 1), baselines, 0, 1)
    assert held.uplink_bytes.tolist() == [0] and held.held.uplink.tolist() == [huge, huge - 1]
