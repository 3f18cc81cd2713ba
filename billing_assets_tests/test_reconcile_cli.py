"""`billing reconcile` for one, several or all sources: one backfill each, or none at all.

Every source named is checked (in the registry, registered as a partition,
something to reconcile) before the first backfill is submitted, so an error
never leaves half a fleet reconciled.
"""

from __future__ import annotations

from datetime import timedelta

from billing_assets.cli.main import main
from billing_assets.core.timeutil import format_rfc3339
from billing_assets.defs.ops.run_tags import SOURCE_TAG, TRIGGER_TAG

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
