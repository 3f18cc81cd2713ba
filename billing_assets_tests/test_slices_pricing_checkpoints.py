"""Pure helpers around the run: slicing partitions, the price list, the checkpoint rule."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_assets.core.pricing import GIB, Plan
from billing_assets.pipeline.slices import Slice, merge_minutes
from billing_assets.registry.pricing_file import PricingError, parse_pricing
from billing_assets.storage.checkpoints import next_high_water

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)
M = timedelta(minutes=1)


@given(st.sets(st.integers(0, 200), min_size=1), st.sets(st.integers(0, 50), max_size=5))
def test_merge_minutes_covers_exactly_the_minutes_given(minutes_a, minutes_b):
    pairs = [("a", T0 + m * M) for m in minutes_a] + [("b", T0 + m * M) for m in minutes_b]
    slices = merge_minutes(pairs)
    covered = {(s.source_id, s.start + i * M) for s in slices for i in range(s.minutes)}
    assert covered == set(pairs)
    for first, second in zip(slices, slices[1:]):
        if first.source_id == second.source_id:
            assert first.end < second.start, "adjacent slices of one source must have been merged"


def test_chunks_partition_a_slice():
    work = Slice("a", T0, T0 + 150 * M)
    parts = list(work.chunks(timedelta(hours=1)))
    assert [p.minutes for p in parts] == [60, 60, 30]
    assert parts[0].start == work.start and parts[-1].end == work.end


@pytest.mark.parametrize(
    "current, since, until, expected",
    [
        (None, T0, T0 + M, T0 + M),  # first fetch sets it
        (T0 + 5 * M, T0 + 4 * M, T0 + 10 * M, T0 + 10 * M),  # contiguous (overlapping) fetch advances
        (T0 + 5 * M, T0 + 5 * M, T0 + 6 * M, T0 + 6 * M),  # exactly adjacent advances
        (T0 + 5 * M, T0 + 7 * M, T0 + 9 * M, T0 + 5 * M),  # a gap: must not skip it
        (T0 + 5 * M, T0, T0 + 2 * M, T0 + 5 * M),  # replay of the past: must not move back
    ],
)
def test_checkpoint_is_a_contiguous_high_water_mark(current, since, until, expected):
    assert next_high_water(current, since, until) == expected


def test_amount_is_exact_and_rounds_half_up():
    plan = Plan("p", Decimal("0.05"), Decimal("0.10"))
    assert plan.amount_nanos(GIB, 0) == 50_000_000
    assert plan.amount_nanos(GIB, GIB) == 150_000_000
    assert plan.amount_nanos(0, 0) == 0
    # 0.05/GiB -> 1 byte costs 0.0000000466 units = 0.0466 nano -> rounds to 0; 11 bytes -> 0.512 -> 1
    assert plan.amount_nanos(1, 0) == 0
    assert plan.amount_nanos(11, 0) == 1


def test_pricing_file_rules():
    pricing = parse_pricing(
        {"currency": "EUR", "default_plan": "basic",
         "plans": {"basic": {"uplink_per_gib": "0.01", "downlink_per_gib": "0.02"},
                   "pro": {"uplink_per_gib": 0, "downlink_per_gib": "0.01"}},
         "users": {"u-1": "pro"}}
    )
    assert pricing.plan_for("u-1").name == "pro" and pricing.plan_for("u-2").name == "basic"
    with pytest.raises(PricingError, match="plan 'x'.*uplink_per_gib"):
        parse_pricing({"plans": {"x": {"uplink_per_gib": "cheap", "downlink_per_gib": 1}}})
    with pytest.raises(PricingError, match="unknown plan"):
        parse_pricing({"plans": {"x": {"uplink_per_gib": 1, "downlink_per_gib": 1}}, "users": {"u": "y"}})
    with pytest.raises(PricingError, match="default_plan"):
        parse_pricing({"default_plan": "z", "plans": {"x": {"uplink_per_gib": 1, "downlink_per_gib": 1}}})
