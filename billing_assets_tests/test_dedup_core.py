"""The pure dedup verdict and the fetch claims, against plain-Python statements of their rules."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_assets.core.claims import Fetch, claim
from billing_assets.core.dedup import Samples, judge


def within(moment, intervals) -> bool:
    """Whether [start, end) intervals hold the moment: how dedup picks a claimed page's items."""
    return any(start <= moment < end for start, end in intervals)


# Few series, few times and few total values, so identities repeat, collide with stored ones and conflict.
identity = st.tuples(st.integers(1, 4), st.integers(0, 5))
totals = st.tuples(st.integers(0, 2), st.integers(0, 2))
rows = st.lists(st.tuples(identity, totals), max_size=40)


def _samples(items) -> Samples:
    if not items:
        return Samples.empty()
    return Samples.of(*zip(*((series, at, up, down) for (series, at), (up, down) in items)))


def _rule(deliveries, stored, horizon):
    """DESIGN.md's rule, one delivery at a time: the first delivery wins, a later different one is a conflict."""
    kept = {key: value for key, value in stored}
    new = []
    for position, (key, value) in enumerate(deliveries):
        if key not in kept and key[1] >= horizon:
            kept[key] = value
            new.append(position)
    conflicts, seen = [], set()
    for position, (key, value) in enumerate(deliveries):
        if key in kept and value != kept[key] and (key, value) not in seen:
            seen.add((key, value))
            conflicts.append((position, kept[key]))
    beyond = sum(1 for key, _ in deliveries if key[1] < horizon)
    return new, conflicts, beyond


@settings(max_examples=400, deadline=None)
@given(rows, st.lists(st.tuples(identity, totals), max_size=15, unique_by=lambda row: row[0]), st.integers(0, 6))
def test_judge_follows_the_first_delivery_rule(deliveries, stored, horizon):
    verdict = judge(_samples(deliveries), _samples(stored), horizon)
    new, conflicts, beyond = _rule(deliveries, stored, horizon)
    assert verdict.new.tolist() == new
    got = sorted(zip(verdict.conflicts.tolist(), zip(verdict.kept_uplink.tolist(), verdict.kept_downlink.tolist())))
    assert got == sorted(conflicts)
    assert verdict.beyond_horizon == beyond


def test_a_replay_of_what_is_stored_stores_nothing_and_conflicts_nothing():
    stored = Samples.of([1, 1, 2], [10, 20, 10], [5, 6, 7], [8, 9, 10])
    verdict = judge(stored, stored, 0)
    assert verdict.new.size == 0 and verdict.conflicts.size == 0


def test_totals_past_two_to_the_53_compare_exactly():
    big = 2**63 - 1
    stored = Samples.of([1], [10], [big], [big])
    verdict = judge(Samples.of([1], [10], [big - 1], [big]), stored, 0)
    assert verdict.conflicts.tolist() == [0] and verdict.kept_uplink.tolist() == [big]


T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
minute = st.integers(0, 30).map(lambda m: T0 + timedelta(minutes=m))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(minute, st.integers(1, 10)), max_size=6),
    st.integers(0, 30),
    st.integers(1, 12),
)
def test_claims_read_every_instant_from_exactly_one_fetch(spans, start, length):
    fetches = [
        Fetch(f"f{n}", begin, begin + timedelta(minutes=width), order=n) for n, (begin, width) in enumerate(spans)
    ]
    since, until = T0 + timedelta(minutes=start), T0 + timedelta(minutes=start + length)
    claims, unclaimed = claim(since, until, fetches)
    covering = [fetch for fetch in fetches if fetch.since <= since and fetch.until >= until]
    by_id = {fetch.fetch_id: fetch for fetch in fetches}
    for step in range(length * 4):  # every 15 s of the range
        moment = since + timedelta(seconds=15 * step)
        owners = [fetch_id for fetch_id, intervals in claims if within(moment, intervals)]
        holders = [fetch for fetch in fetches if fetch.since <= moment < fetch.until]
        assert len(owners) + within(moment, unclaimed) == 1, "each instant is read once, from a fetch or staging"
        if covering:
            assert owners == [max(covering, key=lambda fetch: fetch.order).fetch_id]
        elif holders:
            assert owners == [max(holders, key=lambda fetch: fetch.order).fetch_id]
        else:
            assert within(moment, unclaimed)
    for fetch_id, intervals in claims:
        assert all(by_id[fetch_id].since <= low < high <= by_id[fetch_id].until for low, high in intervals)


def test_the_slices_own_fetch_is_read_whole_even_when_a_newer_fetch_overlaps_its_tail():
    own = Fetch("own", T0, T0 + timedelta(minutes=60), order=1)
    next_window = Fetch("next", T0 + timedelta(minutes=58), T0 + timedelta(minutes=120), order=2)
    assert claim(T0, T0 + timedelta(minutes=60), [own, next_window]) == ([("own", [(T0, T0 + timedelta(minutes=60))])], [])
    assert np.array_equal(judge(Samples.empty(), Samples.empty(), 0).new, np.empty(0))
