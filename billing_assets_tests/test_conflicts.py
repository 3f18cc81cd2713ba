"""Conflicting re-deliveries, the ledger check, and the dedup horizon, through real runs.

A conflict is the same sample identity delivered again with other totals:
the first delivery stays billed, the second is quarantined with both values
and a reason, and the `no_conflicting_deliveries` check turns red. Nothing is
overwritten, and replays neither re-charge nor re-quarantine.
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
from sqlalchemy import select

from billing_assets.defs.runs import materialize_range, range_tags
from billing_assets.core.pricing import DEFAULT_PRICING
from billing_assets.definitions import defs
from billing_assets.defs.ledger.checks import ledger_matches_buckets
from billing_assets.pipeline.bucket import bucket_slice
from billing_assets.pipeline.charge import charge_slice
from billing_assets.pipeline.dedup import dedup_slice
from billing_assets.pipeline.fetch import fetch_slice
from billing_assets.pipeline.slices import Slice
from billing_assets.storage.samples import CONFLICT_REASON
from billing_assets.storage.schema import sample_conflicts, usage_samples
from billing_assets.transport.client import RetryPolicy
from billing_assets_tests.support.db import buckets_by_key, ledger_rows, ledger_sums
from billing_assets_tests.support.outcomes import check_results, serve, window_keys
from billing_assets_tests.support.scripted_exporter import Script, ScriptedItem, ScriptedSample

MINUTE = timedelta(minutes=1)


def two_users(minute, scale: int = 1) -> list[ScriptedItem]:
    """Four snapshots of two growing series over two minutes (two per minute)."""
    return [
        ScriptedItem(minute + timedelta(seconds=s), (
            ScriptedSample("u-1", "vless-in", 1000 * k * scale, 5000 * k * scale),
            ScriptedSample("u-2", "vless-in", 700 * k, 900 * k),
        ))
        for k, s in enumerate((20, 50, 80, 110), start=1)
    ]


def test_conflicting_redelivery_is_quarantined_and_check_fails(billing_env, upstream, recent_hour):
    start = recent_hour
    script = Script(source_id="cf-1", node_id="node-cf-1", items=two_users(start), page_sizes=(2,))
    source = serve(billing_env, upstream, script, start - MINUTE)
    instance, engine = billing_env.instance(), billing_env.engine

    first = materialize_range(defs, instance, source.source_id, start, start + 2 * MINUTE)
    assert first.success
    keys = window_keys("cf-1", start, start + 2 * MINUTE)
    checks = check_results(first)
    for name in ("no_conflicting_deliveries", "ledger_matches_buckets"):
        assert list(checks[name]) == keys, f"{name}: one evaluation per window, each on its partition"
        assert all(evaluation.passed for evaluation in checks[name].values())
        # What makes the UI count a window's verdict: it names that window's latest materialization, this run's.
        assert {evaluation.target_materialization_data.run_id for evaluation in checks[name].values()} == {first.run_id}
    buckets, entries = buckets_by_key(engine, "cf-1"), ledger_rows(engine, "cf-1")
    assert ledger_sums(engine, "cf-1") == buckets

    # The exporter re-sends u-1's 50s sample with a larger total, after the original.
    at = start + timedelta(seconds=50)
    script.items.append(ScriptedItem(at, (ScriptedSample("u-1", "vless-in", 2500, 10000),), visible_from=1))
    script.phase = 1
    second = materialize_range(defs, instance, source.source_id, start, start + 2 * MINUTE)
    assert second.success, "a conflict is quarantined, it does not fail the billing run"
    by_key = check_results(second)["no_conflicting_deliveries"]
    assert list(by_key) == keys
    failed, other = by_key[keys[0]], by_key[keys[1]]  # the conflict was collected at :50 of the first minute
    assert not failed.passed and failed.severity == dg.AssetCheckSeverity.ERROR
    assert failed.metadata["conflicts"].value == 1
    assert other.passed and other.metadata["conflicts"].value == 0 and "example" not in other.metadata, "only its window is red"
    assert failed.target_materialization_data.run_id == second.run_id
    example = failed.metadata["example"].value
    assert example["kept_totals"] == [2000, 10000] and example["rejected_totals"] == [2500, 10000]
    assert example["reason"] == CONFLICT_REASON
    assert "token" not in str(failed.metadata).lower()

    with engine.connect() as connection:
        rows = connection.execute(select(sample_conflicts)).mappings().all()
        kept = connection.execute(
            select(usage_samples.c.uplink_bytes_total).where(usage_samples.c.uuid == "u-1", usage_samples.c.collected_at == at)
        ).scalar_one()
    assert len(rows) == 1
    row = rows[0]
    assert (row["source_id"], row["uuid"], row["collected_at"]) == ("cf-1", "u-1", at)
    assert row["window_start"] == start - source.overlap
    assert (row["kept_uplink_bytes_total"], row["rejected_uplink_bytes_total"]) == (2000, 2500)
    assert kept == 2000, "the first delivery is never overwritten"
    assert buckets_by_key(engine, "cf-1") == buckets
    assert ledger_rows(engine, "cf-1") == entries, "a quarantined delivery charges nothing"

    third = materialize_range(defs, instance, source.source_id, start, start + 2 * MINUTE)
    by_key = check_results(third)["no_conflicting_deliveries"]
    assert not by_key[keys[0]].passed and by_key[keys[1]].passed, "its window stays red until explained"
    with engine.connect() as connection:
        assert len(connection.execute(select(sample_conflicts)).all()) == 1, "a replay does not re-quarantine"


def test_conflict_inside_one_response_keeps_the_first_delivery(billing_env, upstream, recent_hour):
    """Both versions in one fetch: delivery order decides, even across an overlapping page."""
    start = recent_hour
    items = two_users(start)
    at = items[1].collected_at
    items.insert(2, ScriptedItem(at, (ScriptedSample("u-2", "vless-in", 1, 1),)))
    script = Script(source_id="cf-2", node_id="node-cf-2", items=items, page_sizes=(2, 1), page_overlap=1)
    source = serve(billing_env, upstream, script, start - MINUTE)
    engine, work = billing_env.engine, Slice("cf-2", start, start + 2 * MINUTE)
    fetch_slice(engine, source, work, retry=RetryPolicy(attempts=1))
    stats = dedup_slice(engine, source, work)
    assert stats.conflicts == 1
    with engine.connect() as connection:
        kept = connection.execute(
            select(usage_samples.c.uplink_bytes_total).where(usage_samples.c.uuid == "u-2", usage_samples.c.collected_at == at)
        ).scalar_one()
    assert kept == 1400


def test_ledger_check_fails_when_a_run_stopped_before_the_ledger_step(billing_env, upstream, recent_hour):
    """Buckets rewritten by late data, ledger step never ran: the check is red; a re-run repairs it."""
    start = recent_hour
    items = two_users(start)
    late = items.pop(1)
    items.append(ScriptedItem(late.collected_at, late.samples, visible_from=1))
    script = Script(source_id="cf-3", node_id="node-cf-3", items=items)
    source = serve(billing_env, upstream, script, start - MINUTE)
    instance, engine, work = billing_env.instance(), billing_env.engine, Slice("cf-3", start, start + 2 * MINUTE)
    ledger_run = materialize_range(defs, instance, "cf-3", start, start + 2 * MINUTE)
    assert ledger_run.success

    script.phase = 1  # the late sample arrives; the run dies after its bucket step
    fetch_slice(engine, source, work, retry=RetryPolicy(attempts=1))
    dedup_slice(engine, source, work)
    assert bucket_slice(engine, source, work).rows_written > 0

    check_only = dg.define_asset_job("ledger_check_only", selection=dg.AssetSelection.checks(ledger_matches_buckets))
    job = dg.Definitions.merge(defs, dg.Definitions(jobs=[check_only])).resolve_job_def("ledger_check_only")
    result = job.execute_in_process(instance=instance, tags=range_tags("cf-3", start, start + 2 * MINUTE))
    keys = window_keys("cf-3", start, start + 2 * MINUTE)
    by_key = check_results(result)["ledger_matches_buckets"]
    assert list(by_key) == keys
    # The late :50 snapshot (both users) splits each user's delta differently across the two minutes:
    # each minute has its own two buckets rewritten, counted on its own window.
    assert {key: evaluation.metadata["mismatched_buckets"].value for key, evaluation in by_key.items()} == {keys[0]: 2, keys[1]: 2}
    assert not any(evaluation.passed for evaluation in by_key.values())
    for evaluation in by_key.values():
        # A check run on its own judges the last materialization of its window: the earlier run's.
        assert evaluation.target_materialization_data.run_id == ledger_run.run_id

    repaired = materialize_range(defs, instance, "cf-3", start, start + 2 * MINUTE)
    assert list(check_results(repaired)["ledger_matches_buckets"]) == keys
    assert all(evaluation.passed for evaluation in check_results(repaired)["ledger_matches_buckets"].values())
    assert ledger_sums(engine, "cf-3") == {k: v for k, v in buckets_by_key(engine, "cf-3").items() if v != (0, 0)}
    kinds = [row["entry_kind"] for row in ledger_rows(engine, "cf-3")]
    assert "correction" in kinds and kinds.count("charge") == len(buckets_by_key(engine, "cf-3"))


def test_deliveries_older_than_the_horizon_are_refused(billing_env, upstream, recent_hour, monkeypatch):
    """A window older than the horizon is never (re)billed: its late deliveries are dropped and counted."""
    start = recent_hour  # three hours ago
    items = two_users(start)
    script = Script(source_id="cf-4", node_id="node-cf-4", items=items[:2])
    source = serve(billing_env, upstream, script, start - MINUTE)
    engine, work = billing_env.engine, Slice("cf-4", start, start + MINUTE)
    fetch_slice(engine, source, work, retry=RetryPolicy(attempts=1))
    assert dedup_slice(engine, source, work).inserted == 4
    bucket_slice(engine, source, work)
    charge_slice(engine, source, work, DEFAULT_PRICING)
    entries = ledger_rows(engine, "cf-4")

    script.items[:] = items + [items[0]]  # late items and a duplicate, all older than a 1h horizon
    fetch_slice(engine, source, work, retry=RetryPolicy(attempts=1))
    stats = dedup_slice(engine, source, work, horizon=timedelta(hours=1))
    assert (stats.inserted, stats.beyond_horizon) == (0, stats.staged)
    bucket_slice(engine, source, work)
    charge_slice(engine, source, work, DEFAULT_PRICING)
    assert ledger_rows(engine, "cf-4") == entries


def test_dedup_in_chunks_stores_and_quarantines_exactly_what_one_pass_does(billing_env, upstream, recent_hour):
    """Chunks of a page or two give the answer of the whole range at once, re-deliveries across chunks included."""
    start = recent_hour
    items = two_users(start)
    at = items[1].collected_at
    # A conflicting re-delivery two pages later, and an identical one, both after their first delivery.
    items.insert(3, ScriptedItem(at, (ScriptedSample("u-2", "vless-in", 1, 1), ScriptedSample("u-1", "vless-in", 2000, 10000))))
    script = Script(source_id="cf-9", node_id="node-cf-9", items=items, page_sizes=(1,), page_overlap=0)
    source = serve(billing_env, upstream, script, start - MINUTE)
    engine, work = billing_env.engine, Slice("cf-9", start, start + 2 * MINUTE)
    fetch_slice(engine, source, work, retry=RetryPolicy(attempts=1))

    def outcome():
        with engine.connect() as connection:
            samples = sorted(tuple(row) for row in connection.execute(select(
                usage_samples.c.uuid, usage_samples.c.collected_at, usage_samples.c.uplink_bytes_total)))
            conflicts = sorted(tuple(row) for row in connection.execute(select(
                sample_conflicts.c.uuid, sample_conflicts.c.kept_uplink_bytes_total, sample_conflicts.c.rejected_uplink_bytes_total)))
        return samples, conflicts

    whole = dedup_slice(engine, source, work)  # one chunk: the default budget holds every delivery
    expected = outcome()
    with engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM sample_conflicts")
        connection.exec_driver_sql("DELETE FROM usage_sample_rows")
    chunked = dedup_slice(engine, source, work, max_chunk=1)  # a chunk per page
    assert outcome() == expected
    assert chunked == whole and whole.conflicts == 1 and whole.inserted == 8
    assert expected[1] == [("u-2", 1400, 1)]
