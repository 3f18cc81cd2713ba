"""The pure billing arithmetic in core/, against the independent oracle.

No I/O here, so hypothesis can afford many examples: counter deltas, minute
buckets (with baselines from before the window and billing_start), ledger
planning over a bucket's whole life, and integer pricing.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_assets.core.buckets import BUCKET_KEY, SAMPLE_COLUMNS, compute_minute_buckets
from billing_assets.core.plausibility import DEFAULT_MAX_BYTES_PER_SECOND
from billing_assets.core.counters import counter_delta, counter_deltas
from billing_assets.core.ledger import LEDGER_STATE_COLUMNS, plan_ledger_entries
from billing_assets.core.pricing import DEFAULT_PRICING, Plan
from billing_assets_tests.support.histories import counter_histories
from billing_assets_tests.support.oracle import expected_amount_nanos, expected_buckets, expected_sample_counts

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)
TOTALS = st.integers(0, 2**50)


def test_counter_delta_rules():
    assert counter_delta(None, 500) == 500  # first sample counts in full
    assert counter_delta(100, 350) == 250
    assert counter_delta(350, 350) == 0  # idle
    assert counter_delta(350, 40) == 40  # reset: usage since the restart
    assert counter_delta(350, 0) == 0


@given(st.lists(st.tuples(st.one_of(st.none(), TOTALS), TOTALS), max_size=30))
def test_vectorised_deltas_equal_the_scalar_rule(pairs):
    previous = np.array([p if p is not None else 0 for p, _ in pairs], dtype="int64")
    current = np.array([c for _, c in pairs], dtype="int64")
    has_previous = np.array([p is not None for p, _ in pairs], dtype=bool)
    got = counter_deltas(previous, current, has_previous)
    assert list(got) == [counter_delta(p, c) for p, c in pairs]


def sample_sets():
    """Samples of a few series over six minutes, as oracle tuples."""
    return counter_histories(T0).map(
        lambda rows: [("n", "e", uuid, tag, at, up, down) for uuid, tag, at, up, down, _ in rows]
    )


def as_frame(rows) -> pd.DataFrame:
    frame = pd.DataFrame(
        [(n, e, u, t, at, f"{u}@x", up, down) for n, e, u, t, at, up, down in rows], columns=SAMPLE_COLUMNS
    )
    frame["collected_at"] = pd.to_datetime(frame["collected_at"], utc=True)
    return frame


@settings(max_examples=200, deadline=None)
@given(
    sample_sets(), st.integers(0, 5), st.integers(1, 6), st.integers(-60, 7 * 60),
    st.sampled_from([10**6, 10**8, 10**10, DEFAULT_MAX_BYTES_PER_SECOND]),
)
def test_window_buckets_equal_the_batch_answer(rows, first_minute, minutes, billing_offset_s, rate):
    """A window's buckets from its samples plus one baseline per series equal the whole-history answer,
    with implausible deltas (over rate x elapsed) held out of them."""
    start = T0 + timedelta(minutes=first_minute)
    end = start + timedelta(minutes=minutes)
    billing_start = T0 + timedelta(seconds=billing_offset_s)
    inside = [r for r in rows if start <= r[4] < end]
    last_before: dict[tuple, tuple] = {}
    for row in sorted(rows, key=lambda r: r[4]):
        if row[4] < start:
            last_before[row[:4]] = row
    baselines = [row for key, row in last_before.items() if any(r[:4] == key for r in inside)]

    got = compute_minute_buckets(as_frame(inside), as_frame(baselines), billing_start, max_bytes_per_second=rate)
    expected = {k: v for k, v in expected_buckets(rows, billing_start, rate).items() if start <= k[4] < end}
    counts = expected_sample_counts(inside)
    as_dict = {
        tuple(r[c] for c in BUCKET_KEY[:4]) + (r["bucket_start"].to_pydatetime(),): (int(r["uplink_bytes"]), int(r["downlink_bytes"]))
        for _, r in got.iterrows()
    }
    assert as_dict == expected
    assert {k: int(n) for k, n in zip(as_dict, got["sample_count"])} == counts


def test_baseline_is_not_charged_and_samples_before_billing_start_only_set_it():
    rows = [
        ("n", "e", "a", "t", T0 + timedelta(seconds=10), 1000, 10),  # before billing_start: baseline only
        ("n", "e", "a", "t", T0 + timedelta(seconds=70), 1500, 30),
        ("n", "e", "a", "t", T0 + timedelta(seconds=100), 200, 40),  # reset
    ]
    got = compute_minute_buckets(as_frame(rows[1:]), as_frame(rows[:1]), T0 + timedelta(seconds=30))
    assert list(zip(got["uplink_bytes"], got["downlink_bytes"])) == [(500 + 200, 20 + 10)]
    alone = compute_minute_buckets(as_frame(rows), as_frame([]), T0 + timedelta(seconds=30))
    assert list(zip(alone["uplink_bytes"], alone["downlink_bytes"])) == [(0, 0), (700, 30)]


def ledger_state(up: int, down: int, entries: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        [{
            "node_id": "n", "env": "e", "uuid": "u", "inbound_tag": "t", "bucket_start": pd.Timestamp(T0),
            "email": "u@x", "uplink_bytes": up, "downlink_bytes": down,
            "entry_count": len(entries),
            "charged_uplink": sum(e["uplink_bytes"] for e in entries),
            "charged_downlink": sum(e["downlink_bytes"] for e in entries),
            "charged_nanos": sum(e["amount_nanos"] for e in entries),
            "last_seq": max((e["entry_seq"] for e in entries), default=0),
        }],
        columns=LEDGER_STATE_COLUMNS,
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(TOTALS, TOTALS), min_size=1, max_size=8), st.integers(1, 3))
def test_ledger_plan_over_a_buckets_life(values, replays):
    """A bucket that takes these values in turn, each planned `replays` times, is charged exactly once."""
    entries: list[dict] = []
    for up, down in values:
        for _ in range(replays):
            planned = plan_ledger_entries(ledger_state(up, down, entries), DEFAULT_PRICING)
            assert len(planned) <= 1
            entries += planned.to_dict("records")
        charged = (sum(e["uplink_bytes"] for e in entries), sum(e["downlink_bytes"] for e in entries))
        if entries:
            assert charged == (up, down)
            assert sum(e["amount_nanos"] for e in entries) == expected_amount_nanos(up, down, "0.02", "0.05")
        else:
            assert (up, down) == (0, 0), "only a never-charged empty bucket may have no entry"
    kinds = [e["entry_kind"] for e in entries]
    assert kinds[:1] in ([], ["charge"]) and set(kinds[1:]) <= {"correction"}
    assert [e["entry_seq"] for e in entries] == list(range(1, len(entries) + 1))
    changes = sum(1 for a, b in zip([(0, 0), *values], values) if a != b)
    assert len(entries) == changes, "one entry per change of the bucket, none per replay"


@settings(max_examples=300, deadline=None)
@given(TOTALS, TOTALS, st.decimals(0, 100, places=9), st.decimals(0, 100, places=9))
def test_amount_nanos_is_exact_and_rounds_half_up(up, down, up_rate, down_rate):
    plan = Plan("p", Decimal(up_rate), Decimal(down_rate))
    assert plan.amount_nanos(up, down) == expected_amount_nanos(up, down, str(up_rate), str(down_rate))


def test_amount_rounding_examples():
    plan = Plan("p", Decimal("1"), Decimal("0"))
    assert plan.amount_nanos(2**30, 0) == 10**9
    assert plan.amount_nanos(1, 0) == 1  # 0.93 nanos rounds up
    half = Plan("h", Decimal("0.000000001"), Decimal("0"))
    assert half.amount_nanos(2**29, 0) == 1  # exactly half a nano rounds up
    assert half.amount_nanos(2**29 - 1, 0) == 0
