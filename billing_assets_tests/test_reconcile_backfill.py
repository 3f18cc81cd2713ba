"""Reconcile as a real Dagster asset backfill, run by Dagster's own daemons in-process.

Late deliveries (Faults.late_seconds with a fake clock) make the first
collection miss the tail of the last minute; the reconcile backfill must
repair exactly those buckets, by appending corrections, in one run.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from billing_assets.defs.runs import materialize_range
from billing_assets.core.timeutil import MINUTE, floor_minute, now_utc
from billing_assets.definitions import defs
from billing_assets.defs.automation.reconcile import submit_reconcile_backfill
from billing_assets.defs.runs import SOURCE_TAG, TRIGGER_TAG
from billing_assets.exporter import Faults
from billing_assets_tests.support.daemons import drive_backfill, write_test_instance_yaml
from billing_assets_tests.support.db import buckets_by_key, ledger_rows, ledger_sums, nonzero
from billing_assets_tests.support.oracle import exporter_samples, expected_buckets, within
from billing_assets_tests.support.sensors import FakeClock


@pytest.mark.slow
def test_reconcile_backfill_corrects_only_late_buckets(billing_env):
    write_test_instance_yaml(billing_env.dagster_home)
    start = floor_minute(now_utc()) - timedelta(hours=3)
    end = start + timedelta(minutes=20)
    fake = FakeClock(end)
    exporter = billing_env.fleet.start("eu-1", billing_start=start, users=6, clock=fake, faults=Faults(late_seconds=30))
    billing_env.write_registry()
    billing_env.sync_partitions()
    instance = billing_env.instance()
    engine = billing_env.engine

    assert materialize_range(defs, instance, "eu-1", start, end, log_level="ERROR").success
    before_rows = ledger_rows(engine, "eu-1")
    before_buckets = buckets_by_key(engine, "eu-1")
    assert before_rows and all(row["entry_kind"] == "charge" for row in before_rows)

    fake.now = end + timedelta(minutes=10)  # every late item is visible now
    backfill_id = submit_reconcile_backfill(instance, defs, "eu-1", start, end)
    backfill = drive_backfill(instance, backfill_id)
    assert backfill.status.value == "COMPLETED_SUCCESS"

    runs = [r.dagster_run for r in instance.get_run_records() if r.dagster_run.tags.get("dagster/backfill") == backfill_id]
    assert len(runs) == 1, "a single-run backfill policy: one run for the whole range"
    tags = runs[0].tags
    assert tags[SOURCE_TAG] == "eu-1" and tags[TRIGGER_TAG] == "reconcile"
    assert tags["dagster/asset_partition_range_start"] == f"{start:%Y-%m-%d-%H:%M}|eu-1"
    assert tags["dagster/asset_partition_range_end"] == f"{end - MINUTE:%Y-%m-%d-%H:%M}|eu-1"

    after_rows = ledger_rows(engine, "eu-1")
    assert after_rows[: len(before_rows)] == before_rows, "existing ledger entries are never edited"
    appended = after_rows[len(before_rows):]
    after_buckets = buckets_by_key(engine, "eu-1")
    changed = {key for key, value in after_buckets.items() if before_buckets.get(key) != value}
    assert changed, "the late items must have changed some buckets"
    assert {key[4] for key in changed} == {end - MINUTE}, "only the last minute held late items"
    corrected = {(r["node_id"], r["env"], r["uuid"], r["inbound_tag"], r["bucket_start"]) for r in appended}
    assert corrected == changed, "entries exactly where a bucket changed, nowhere else"
    assert all(r["entry_kind"] == "correction" for r in appended if (r["node_id"], r["env"], r["uuid"], r["inbound_tag"], r["bucket_start"]) in before_buckets)

    shape = exporter.server.shape
    oracle = within(
        expected_buckets(exporter_samples(shape.model, shape.node_id, shape.env, start - timedelta(hours=1), end), start),
        start, end,
    )
    assert nonzero(after_buckets) == nonzero(oracle)
    assert nonzero(ledger_sums(engine, "eu-1")) == nonzero(oracle)

    # A second reconcile of the same range finds nothing to correct.
    again = drive_backfill(instance, submit_reconcile_backfill(instance, defs, "eu-1", start, end))
    assert again.status.value == "COMPLETED_SUCCESS"
    assert ledger_rows(engine, "eu-1") == after_rows
