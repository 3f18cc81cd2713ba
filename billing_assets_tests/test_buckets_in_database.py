"""PostgreSQL's bucket step gives the pure function's answers.

`storage/bucket_columns.py` reads the window as packed columns and derives
buckets with the numpy rule per series id (`core.series_minutes`); here it
and the pandas reference run on the same generated histories (resets, idle series, samples
before the window and before billing_start, several emails per minute, stale
and current stored buckets), on a real PostgreSQL, and must agree exactly on
every bucket, on the figures the step reports, and on which rows it rewrites.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from billing_assets.core.buckets import BUCKET_COLUMNS, RELEASED_COLUMNS, SAMPLE_COLUMNS, derive_minute_usage
from billing_assets.core.plausibility import DEFAULT_MAX_BYTES_PER_SECOND
from billing_assets.storage.bucket_columns import recompute_buckets
from billing_assets.storage.engine import get_engine, migrate
from billing_assets.storage.schema import usage_minute_buckets, usage_quarantine
from billing_assets_tests.support.db import insert_samples
from billing_assets_tests.support.histories import counter_histories, sample_frame, sample_rows, window_and_baselines

pytestmark = pytest.mark.postgres

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)
NOW = T0 + timedelta(days=1)


@pytest.fixture(scope="module")
def pg_engine(postgres_server):
    engine = migrate(get_engine(postgres_server.create_database()))
    yield engine
    engine.dispose()


def histories():
    """Sample rows (SAMPLE_COLUMNS order) of a few series over six minutes; emails change now and then."""
    return counter_histories(T0, tags=("vless-in", "trojan-in"), max_growth=10**12, per_series=14).map(sample_rows)


def pure_answer(rows, start, end, billing_start, rate=None, released=None):
    inside, before = window_and_baselines(rows, start, end)
    return derive_minute_usage(sample_frame(inside), sample_frame(before), billing_start, rate, released)


def hold_keys(held) -> set:
    return {
        (r["node_id"], r["env"], r["uuid"], r["inbound_tag"], pd.Timestamp(r["collected_at"]).to_pydatetime(),
         int(r["held_uplink_bytes"]), int(r["held_downlink_bytes"]))
        for r in held
    }


def as_dict(buckets) -> dict:
    return {
        (r["node_id"], r["env"], r["uuid"], r["inbound_tag"], pd.Timestamp(r["bucket_start"]).to_pydatetime()): (
            r["email"], int(r["uplink_bytes"]), int(r["downlink_bytes"]), int(r["sample_count"])
        )
        for r in buckets
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    histories(),
    st.integers(0, 5),
    st.integers(1, 6),
    st.integers(-60, 7 * 60),
    st.lists(st.tuples(st.integers(0, 50), st.booleans()), max_size=6),
    st.sampled_from([10**6, 10**9, 10**10, DEFAULT_MAX_BYTES_PER_SECOND]),
    st.lists(st.booleans(), max_size=8),
    st.booleans(),
)
def test_database_buckets_equal_the_pure_function(
    pg_engine, rows, first_minute, minutes, billing_offset_s, stored, rate, releases, foreign
):
    """Buckets, figures, rewrites and plausibility holds (with some released) agree exactly."""
    start = T0 + timedelta(minutes=first_minute)
    end = start + timedelta(minutes=minutes)
    billing_start = T0 + timedelta(seconds=billing_offset_s)
    unreleased = pure_answer(rows, start, end, billing_start, rate).held
    released = unreleased.loc[[i < len(releases) and releases[i] for i in range(len(unreleased))]]
    usage = pure_answer(rows, start, end, billing_start, rate, released[RELEASED_COLUMNS])
    expected = as_dict(usage.buckets[BUCKET_COLUMNS].to_dict("records"))
    expected_holds = hold_keys(usage.held.to_dict("records"))

    with pg_engine.connect() as connection, connection.begin() as transaction:
        insert_samples(connection, [dict(zip(SAMPLE_COLUMNS, row), source_id="src", ingested_at=NOW) for row in rows])
        # Some buckets already stored: some current, some stale (as after late data).
        keys = sorted(expected)
        prior = {}
        for index, stale in stored:
            if not keys:
                break
            key = keys[index % len(keys)]
            email, up, down, count = expected[key]
            prior[key] = (email, up + 1, down, count) if stale else expected[key]
        if prior:
            connection.execute(usage_minute_buckets.insert(), [
                # `foreign`: stored under another source that shares the series' node_id, so the
                # window looks unwritten (the first-pass plain insert) but its keys are taken.
                dict(zip(("node_id", "env", "uuid", "inbound_tag", "bucket_start"), key), source_id="other" if foreign else "src", email=v[0],
                     uplink_bytes=v[1], downlink_bytes=v[2], sample_count=v[3], updated_at=T0)
                for key, v in prior.items()
            ])  # fmt: skip

        if not released.empty:
            connection.execute(usage_quarantine.insert(), [
                dict(r, source_id="src", collected_at=pd.Timestamp(r["collected_at"]).to_pydatetime(),
                     elapsed_us=None if pd.isna(r["elapsed_us"]) else int(r["elapsed_us"]),
                     detected_at=T0, released_at=T0, released_by="test")
                for r in released.to_dict("records")
            ])  # fmt: skip

        done = recompute_buckets(connection, "src", start, end, billing_start, NOW, rate)
        got = as_dict(connection.execute(select(usage_minute_buckets)).mappings())
        assert got == expected
        held_rows = connection.execute(select(usage_quarantine).where(usage_quarantine.c.released_at.is_(None))).mappings()
        assert hold_keys(held_rows) == expected_holds
        assert done.held == len(expected_holds)
        assert done.buckets == len(expected)
        assert done.samples == sum(v[3] for v in expected.values())
        assert (done.uplink_bytes, done.downlink_bytes) == (
            sum(v[1] for v in expected.values()), sum(v[2] for v in expected.values())
        )
        assert done.rows_written == sum(1 for key in expected if prior.get(key) != expected[key])
        again = recompute_buckets(connection, "src", start, end, billing_start, NOW, rate)
        assert again.rows_written == 0 and again.holds_changed == 0, "a replay rewrites nothing"
        transaction.rollback()
