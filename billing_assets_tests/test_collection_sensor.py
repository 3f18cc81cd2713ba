"""The real collection sensor against a real instance, a real HTTPS exporter and
a fake clock shared by both: steady collection, a 3-hour outage, catch-up.

Run requests are executed exactly as the daemon would launch them: the
implicit asset job with the request's tags (range + billing/source).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from billing_assets.core.timeutil import MINUTE, floor_minute, now_utc
from billing_assets.defs.automation import clock
from billing_assets.defs.automation.collection_sensor import collection_sensor
from billing_assets.defs.automation.due_windows import due_range, retry_after
from billing_assets.defs.runs import SOURCE_TAG
from billing_assets.exporter import Faults
from billing_assets.storage import checkpoints
from billing_assets_tests.support.db import buckets_by_key, ledger_sums, nonzero
from billing_assets_tests.support.oracle import exporter_samples, expected_buckets, within
from billing_assets_tests.support.sensors import FakeClock, SensorDriver


def _high_water(engine, source_id):
    with engine.connect() as connection:
        return (checkpoints.read_checkpoint(connection, source_id) or {}).get("last_successful_until")


@pytest.mark.slow
def test_sensor_catches_up_after_three_hour_outage_in_a_few_runs(billing_env, monkeypatch):
    monkeypatch.setenv("BILLING_COLLECT_LAG", "30s")
    monkeypatch.setenv("BILLING_COLLECT_OVERLAP", "1m")
    monkeypatch.setenv("BILLING_COLLECT_MAX_RANGE", "90m")
    start = floor_minute(now_utc()) - timedelta(hours=5)
    fake = FakeClock(start + timedelta(minutes=10, seconds=40))
    monkeypatch.setattr(clock, "now", fake)
    exporter = billing_env.fleet.start("eu-1", billing_start=start, users=4, clock=fake)
    billing_env.fleet.start(
        "off-1", billing_start=start, users=2, seed=2, clock=fake, enabled=False
    )
    billing_env.write_registry()
    billing_env.sync_partitions()
    instance = billing_env.instance()
    engine = billing_env.engine
    driver = SensorDriver(instance, collection_sensor)

    # Steady state: one run for the first 10 closed minutes, then nothing until a minute closes.
    requests = driver.evaluate()
    assert len(requests) == 1 and requests[0].tags[SOURCE_TAG] == "eu-1", "disabled source must not be requested"
    assert requests[0].tags["dagster/asset_partition_range_start"].startswith(start.strftime("%Y-%m-%d-%H:%M"))
    assert driver.execute(requests[0])
    assert _high_water(engine, "eu-1") == start + timedelta(minutes=10)
    assert driver.evaluate() == [], "same minute again: nothing new is due"

    # A queued run of the source blocks new requests (never the same range twice).
    fake.now += timedelta(minutes=1)
    queued = instance.create_run_for_job(driver.job, tags={SOURCE_TAG: "eu-1"})
    assert driver.evaluate() == []
    instance.delete_run(queued.run_id)
    assert driver.until_idle() == 1

    # Outage: 3 hours of failures, with backoff between attempts.
    exporter.server.faults = Faults(down=True)
    outage_start_hw = _high_water(engine, "eu-1")
    failures = 0
    for _ in range(2):
        fake.now += timedelta(minutes=90)
        outcomes = driver.tick()
        assert outcomes == [False]
        failures += 1
        assert driver.tick() == [], "a failing source is backed off, not hammered every tick"
    assert _high_water(engine, "eu-1") == outage_start_hw, "a failed fetch never moves the checkpoint"
    with engine.connect() as connection:
        mark = checkpoints.read_checkpoint(connection, "eu-1")
    assert mark["consecutive_failures"] == failures and "503" in mark["last_error"]

    # Recovery: catch up 3 hours in ranges of at most 90 minutes.
    exporter.server.faults = Faults()
    fake.now += timedelta(minutes=5)  # past the backoff after three failures (2 x collect_interval)
    runs_before = len(driver.runs)
    catch_up = driver.until_idle()
    assert 2 <= catch_up <= 3, f"3h behind with a 90-minute cap must take 2-3 runs, took {catch_up}"
    for tags, _ in driver.runs[runs_before:]:
        first = tags["dagster/asset_partition_range_start"].split("|")[0]
        last = tags["dagster/asset_partition_range_end"].split("|")[0]
        assert tags[SOURCE_TAG] == "eu-1"
        span = floor_minute(fake.now).strptime(last, "%Y-%m-%d-%H:%M") - floor_minute(fake.now).strptime(first, "%Y-%m-%d-%H:%M")
        assert span < timedelta(minutes=90)
    end = floor_minute(fake.now - timedelta(seconds=30))
    assert _high_water(engine, "eu-1") == end
    assert nonzero({k: v for k, v in buckets_by_key(engine).items() if k[0] == "node-off-1"}) == {}

    shape = exporter.server.shape
    oracle = within(
        expected_buckets(exporter_samples(shape.model, shape.node_id, shape.env, start - timedelta(hours=1), end), start),
        start, end,
    )
    assert nonzero(buckets_by_key(engine, "eu-1")) == nonzero(oracle)
    assert nonzero(ledger_sums(engine, "eu-1")) == nonzero(oracle), "each byte charged exactly once across overlaps"


def test_due_range_is_bounded_and_overlaps():
    start = floor_minute(now_utc()) - timedelta(days=1)
    common = dict(billing_start=start, partitions_start=start - timedelta(days=30), lag=timedelta(seconds=30),
                  overlap=MINUTE, max_range=timedelta(hours=2))
    first = due_range(high_water=None, now=start + timedelta(minutes=5, seconds=31), **common)
    assert (first.start, first.end) == (start, start + timedelta(minutes=5)), "never before billing_start"
    later = due_range(high_water=start + timedelta(minutes=5), now=start + timedelta(hours=6), **common)
    assert later.start == start + timedelta(minutes=4), "re-reads one window before the checkpoint"
    assert later.end - later.start == timedelta(hours=2)
    assert due_range(high_water=start + timedelta(minutes=5), now=start + timedelta(minutes=5, seconds=50), **common) is None
    clipped = due_range(high_water=None, now=start + timedelta(minutes=3), **dict(common, partitions_start=start + timedelta(seconds=10)))
    assert clipped.start == start + MINUTE, "no window before the partitions' start"
    assert retry_after(start, 0, MINUTE, timedelta(minutes=10)) is None
    assert retry_after(start, 3, MINUTE, timedelta(minutes=10)) == start + 4 * MINUTE
    assert retry_after(start, 30, MINUTE, timedelta(minutes=10)) == start + timedelta(minutes=10)
