"""Progress lines in a long run's log: windows done/total, rate, ETA."""

from __future__ import annotations

import re
from datetime import timedelta

from billing_assets.core.timeutil import MINUTE
from billing_assets.pipeline import progress as progress_meter
from billing_assets.pipeline.progress import Progress
from billing_assets.pipeline.slices import Slice


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_are_spaced_say_how_far_and_estimate_the_rest(recent_hour):
    clock, told = Clock(), []
    work = Slice("eu-1", recent_hour, recent_hour + 240 * MINUTE)
    meter = Progress("usage_minute_buckets", work, told.append, every_s=10, clock=clock)
    clock.now += 5
    meter.advance(work.start + 30 * MINUTE, 1_000)
    assert told == [], "nothing before the interval has passed"
    clock.now += 15  # 20 s in, 60 of 240 windows
    meter.advance(work.start + 60 * MINUTE, 3_000)
    assert told == ["usage_minute_buckets eu-1: 60/240 windows (25%), 4,000 samples at 200/s, ETA 1m00s"]
    clock.now += 1
    meter.advance(work.start + 90 * MINUTE, 0)
    assert len(told) == 1, "at most one line per interval"
    meter.advance(work.start + 30 * MINUTE, 0)
    assert meter.windows_done == 90, "a part that ends earlier never moves progress back"
    clock.now += 20
    meter.advance(work.end + 60 * MINUTE, 0)
    assert len(told) == 1 and meter.windows_done == 240, "the end is told by finish, not twice"
    assert re.fullmatch(r"usage_minute_buckets eu-1: 240/240 windows \(100%\), 4,000 samples at 98/s in 41\.0s", meter.finish())


def test_a_long_run_logs_progress_of_each_step_between_start_and_end(billing_env, recent_hour, monkeypatch):
    from billing_assets.defs.runs import materialize_range
    from billing_assets.definitions import defs

    monkeypatch.setattr(progress_meter, "EVERY_S", 0.0)
    start = recent_hour - timedelta(hours=2)
    billing_env.fleet.start("eu-1", billing_start=start, users=3)
    billing_env.write_registry()
    billing_env.sync_partitions()
    instance = billing_env.instance()
    result = materialize_range(defs, instance, "eu-1", start, start + timedelta(hours=3))
    assert result.success
    lines = [entry.user_message for entry in instance.all_logs(result.run_id)]
    for step in ("usage_minute_buckets", "billing_ledger"):  # one chunk per hour: told after the first and second
        assert any(re.match(rf"{step} eu-1: 60/180 windows \(33%\), [\d,]+ \w+ at [\d,]+/s, ETA \S+$", line) for line in lines), step
        assert any(re.match(rf"{step} eu-1: 120/180 windows", line) for line in lines), step
    for step in ("exporter_snapshots", "usage_samples", "usage_minute_buckets", "billing_ledger"):
        assert any(re.match(rf"{step} eu-1: 180/180 windows \(100%\).* in \d", line) for line in lines), step
