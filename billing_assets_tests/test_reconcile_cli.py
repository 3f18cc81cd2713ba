"""`billing reconcile` for one, several or all sources: one backfill each, or none at all.

Every source named is checked (in the registry, registered as a partition,
something to reconcile) before the first backfill is submitted, so an error
never leaves half a fleet reconciled.
"""

from __future__ import annotations

from datetime import timedelta

from billing_assets.cli.main import main
from billing_assets.core.timeutil import format_rfc3339
from billing_assets.defs.runs import SOURCE_TAG, TRIGGER_TAG

MINUTES = 30


def targets(backfill) -> dict[str, set[str]]:
    """Asset name -> partition keys a backfill covers."""
    by_asset: dict[str, set[str]] = {}
    for asset_partition in backfill.asset_backfill_data.target_subset.iterate_asset_partitions():
        by_asset.setdefault(asset_partition.asset_key.to_user_string(), set()).add(str(asset_partition.partition_key))
    return by_asset


def test_all_sources_submits_one_backfill_per_enabled_source(billing_env, recent_hour, capsys):
    since, until = recent_hour, recent_hour + timedelta(minutes=MINUTES)
    for n, source_id in enumerate(("rc-a", "rc-b")):
        billing_env.fleet.start(source_id, billing_start=recent_hour - timedelta(hours=1), users=2, seed=n + 1)
    billing_env.fleet.start("rc-off", billing_start=recent_hour, users=2, seed=9, enabled=False)
    billing_env.write_registry()
    billing_env.sync_partitions()
    instance = billing_env.instance()

    code = main(["reconcile", "--all-sources", "--since", format_rfc3339(since), "--until", format_rfc3339(until)])
    assert code == 0, capsys.readouterr().err
    backfills = {backfill.tags[SOURCE_TAG]: backfill for backfill in instance.get_backfills()}
    assert sorted(backfills) == ["rc-a", "rc-b"], "disabled sources are not reconciled"
    for source_id, backfill in backfills.items():
        assert backfill.tags[TRIGGER_TAG] == "reconcile"
        covered = targets(backfill)
        assert sorted(covered) == ["billing_ledger", "exporter_snapshots", "usage_minute_buckets", "usage_samples"]
        expected = {f"{since + timedelta(minutes=m):%Y-%m-%d-%H:%M}|{source_id}" for m in range(MINUTES)}
        assert all(keys == expected for keys in covered.values()), f"{source_id}: exactly its own minutes"


def test_an_unknown_or_unsynced_source_submits_nothing(billing_env, recent_hour, capsys):
    since, until = format_rfc3339(recent_hour), format_rfc3339(recent_hour + timedelta(minutes=5))
    billing_env.fleet.start("rc-a", billing_start=recent_hour, users=2)
    billing_env.write_registry()
    billing_env.sync_partitions()
    instance = billing_env.instance()

    assert main(["reconcile", "--source", "rc-a", "--source", "nope", "--since", since, "--until", until]) == 2
    assert "nope" in capsys.readouterr().err
    assert instance.get_backfills() == []

    billing_env.fleet.start("rc-new", billing_start=recent_hour, users=2, seed=2)
    billing_env.write_registry()  # in the registry, but `billing sources sync` has not run
    assert main(["reconcile", "--all-sources", "--since", since, "--until", until]) == 2
    err = capsys.readouterr().err
    assert "'rc-new'" in err and "billing sources sync" in err
    assert instance.get_backfills() == [], "rc-a must not be submitted alone"

    assert main(["reconcile", "--source", "rc-a", "--since", since, "--until", until]) == 0
    assert [backfill.tags[SOURCE_TAG] for backfill in instance.get_backfills()] == ["rc-a"]


def test_reconcile_schedule_requests_the_trailing_horizon_per_enabled_window_source(billing_env, recent_hour, monkeypatch):
    """The schedule as the daemon evaluates it: one range run per enabled, registered window-API
    source over the trailing horizon, tagged for the per-source queue limit; nothing for the rest."""
    import dagster as dg

    from billing_assets.core.timeutil import MINUTE, floor_minute
    from billing_assets.defs.automation import clock
    from billing_assets.defs.automation.reconcile import reconcile_schedule
    from billing_assets.defs.resources import BillingStore

    now = recent_hour + timedelta(hours=2, seconds=20)
    monkeypatch.setattr(clock, "now", lambda: now)
    monkeypatch.setenv("BILLING_RECONCILE_HORIZON", "1h")
    billing_env.fleet.start("rs-a", billing_start=recent_hour - timedelta(hours=1), users=2)
    billing_env.fleet.start("rs-late", billing_start=now - timedelta(minutes=20), users=2, seed=2)
    billing_env.fleet.start("rs-off", billing_start=recent_hour, users=2, seed=3, enabled=False)
    billing_env.write_registry()
    billing_env.sync_partitions()
    billing_env.fleet.start("rs-unsynced", billing_start=recent_hour, users=2, seed=4)
    billing_env.write_registry()  # in the registry, not yet a partition: the sensor adds it first

    context = dg.build_schedule_context(instance=billing_env.instance(), resources={"billing": BillingStore()})
    requests = list(reconcile_schedule(context))
    by_source = {request.tags[SOURCE_TAG]: request for request in requests}
    assert sorted(by_source) == ["rs-a", "rs-late"]
    until = now - timedelta(seconds=30)  # BILLING_COLLECT_LAG: only windows closed that long ago
    last = floor_minute(until) - MINUTE
    for source_id, first in (("rs-a", floor_minute(until - timedelta(hours=1))), ("rs-late", floor_minute(now - timedelta(minutes=20)))):
        tags = by_source[source_id].tags
        assert tags[TRIGGER_TAG] == "reconcile"
        assert tags["dagster/asset_partition_range_start"] == f"{first:%Y-%m-%d-%H:%M}|{source_id}"
        assert tags["dagster/asset_partition_range_end"] == f"{last:%Y-%m-%d-%H:%M}|{source_id}"
