"""`billing reconcile` for one, several or all sources: one backfill each, or none at all.

Every source named is checked (in the registry, registered as a partition,
something to reconcile) before the first backfill is submitted, so an error
never leaves half a fleet reconciled.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

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


# Many sources without exporters: reconcile only lists them, it never fetches.
MANY = [f"par-{n:02d}" for n in range(24)]


def write_many_sources(billing_env, monkeypatch, billing_start) -> None:
    monkeypatch.setenv("RECONCILE_TEST_TOKEN", "never-used")
    entries = [
        {
            "source_id": source_id, "node_id": f"node-{source_id}", "env": "test", "base_url": "https://127.0.0.1:9",
            "auth_mode": "bearer", "credential_ref": "env:RECONCILE_TEST_TOKEN", "ca_bundle_ref": f"file:{billing_env.sources_file}",
            "server_name": "par.test", "billing_start": format_rfc3339(billing_start),
        }  # fmt: skip
        for source_id in MANY
    ]
    billing_env.write_registry(entries)
    billing_env.sync_partitions()


def use_postgres_instance_storage(billing_env, postgres_server) -> None:
    """Runs, events and schedules in PostgreSQL, as production (deploy/dagster.yaml) and the fleet bench."""
    import yaml

    url = postgres_server.create_database("dagster").replace("postgresql+psycopg://", "postgresql+psycopg2://")
    config = {"telemetry": {"enabled": False}, "storage": {"postgres": {"postgres_url": url}}}
    (billing_env.dagster_home / "dagster.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def instance_storage(request, billing_env) -> str:
    if request.param == "postgres":
        use_postgres_instance_storage(billing_env, request.getfixturevalue("postgres_server"))
    return request.param


def record_add_backfill(monkeypatch, wrap):
    """Patches DagsterInstance.add_backfill with wrap(original, instance, backfill)."""
    import dagster as dg

    original = dg.DagsterInstance.add_backfill
    monkeypatch.setattr(dg.DagsterInstance, "add_backfill", lambda self, backfill: wrap(original, self, backfill))


def assert_exact_reconcile_backfills(instance, source_ids, since) -> dict[str, str]:
    """One backfill per source, of exactly its minutes of the four billing assets; returns source -> backfill id."""
    seen = [backfill.tags[SOURCE_TAG] for backfill in instance.get_backfills()]
    assert sorted(seen) == sorted(source_ids), "exactly one backfill per source"
    by_source = {backfill.tags[SOURCE_TAG]: backfill for backfill in instance.get_backfills()}
    for source_id, backfill in by_source.items():
        assert backfill.tags == {SOURCE_TAG: source_id, TRIGGER_TAG: "reconcile"}
        covered = targets(backfill)
        assert sorted(covered) == ["billing_ledger", "exporter_snapshots", "usage_minute_buckets", "usage_samples"]
        expected = {f"{since + timedelta(minutes=m):%Y-%m-%d-%H:%M}|{source_id}" for m in range(MINUTES)}
        assert all(keys == expected for keys in covered.values()), f"{source_id}: exactly its own minutes"
    return {source_id: backfill.backfill_id for source_id, backfill in by_source.items()}


def announced(out: str) -> dict[str, str]:
    """source -> backfill id from the `backfill <id>: reconcile <source> [...)` lines."""
    return {line.split()[3]: line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("backfill ")}


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_on_postgres_instance_storage_sources_are_submitted_in_parallel_one_backfill_each(
    billing_env, postgres_server, recent_hour, capsys, monkeypatch
):
    use_postgres_instance_storage(billing_env, postgres_server)
    write_many_sources(billing_env, monkeypatch, recent_hour - timedelta(hours=1))
    since, until = recent_hour, recent_hour + timedelta(minutes=MINUTES)
    # The first two adds wait for each other: only concurrent submitters get past (no timing asserted;
    # a sequential submitter breaks the barrier after its timeout and the command fails).
    barrier, lock, calls, threads = threading.Barrier(2, timeout=120), threading.Lock(), [], set()

    def concurrently(original, instance, backfill):
        with lock:
            calls.append(backfill.tags[SOURCE_TAG])
            first_two = len(calls) <= 2
            threads.add(threading.current_thread().name)
        if first_two:
            barrier.wait()
        return original(instance, backfill)

    record_add_backfill(monkeypatch, concurrently)
    code = main(["reconcile", "--all-sources", "--since", format_rfc3339(since), "--until", format_rfc3339(until)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert len(threads) > 1 and threading.main_thread().name not in threads
    ids = assert_exact_reconcile_backfills(billing_env.instance(), MANY, since)
    assert announced(out) == ids and list(announced(out)) == MANY, "every source announced once, in registry order"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_on_sqlite_instance_storage_backfills_are_added_one_at_a_time(billing_env, recent_hour, capsys, monkeypatch):
    write_many_sources(billing_env, monkeypatch, recent_hour - timedelta(hours=1))
    since, until = recent_hour, recent_hour + timedelta(minutes=MINUTES)
    threads = []
    record_add_backfill(monkeypatch, lambda original, instance, backfill: threads.append(threading.current_thread()) or original(instance, backfill))
    assert main(["reconcile", "--all-sources", "--since", format_rfc3339(since), "--until", format_rfc3339(until)]) == 0
    assert threads == [threading.main_thread()] * len(MANY), "one writer: SQLite locks the file"
    assert announced(capsys.readouterr().out) == assert_exact_reconcile_backfills(billing_env.instance(), MANY, since)


def report_lists(err: str) -> tuple[list[str], list[str]]:
    """(submitted, not submitted) sources, as the failure report lists them."""
    lines = {line.strip().split(" (", 1)[0]: line.split(": ", 1)[1] for line in err.splitlines() if line.startswith("  ")}
    submitted = [item.split(" (")[0] for item in lines["submitted"].split(", ") if item != "-"]
    not_submitted = [item for item in lines["not submitted"].split(", ") if item != "-"]
    return submitted, not_submitted


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("written", [False, True], ids=["fails-before-writing", "fails-after-writing"])
def test_a_failure_mid_submission_reports_exactly_what_was_submitted(
    billing_env, instance_storage, written, recent_hour, capsys, monkeypatch
):
    """The 11th add fails (before or after its row is written): the rest stop, exit 1, and stderr
    lists each source as submitted or not, matching the instance exactly, with the command for the rest."""
    write_many_sources(billing_env, monkeypatch, recent_hour - timedelta(hours=1))
    since, until = format_rfc3339(recent_hour), format_rfc3339(recent_hour + timedelta(minutes=MINUTES))
    broken = MANY[10]

    def failing(original, instance, backfill):
        if backfill.tags[SOURCE_TAG] != broken:
            return original(instance, backfill)
        if written:
            original(instance, backfill)
        raise RuntimeError("server closed the connection unexpectedly")

    record_add_backfill(monkeypatch, failing)
    code = main(["reconcile", "--all-sources", "--since", since, "--until", until])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert f"failed: {broken}: RuntimeError: server closed the connection unexpectedly" in err
    submitted, not_submitted = report_lists(err)
    assert sorted(submitted + not_submitted) == sorted(MANY) and not set(submitted) & set(not_submitted)
    assert (broken in submitted) == written, "a failed add whose row landed counts as submitted"
    if instance_storage == "sqlite":  # one at a time, in registry order: nothing after the failure starts
        assert submitted == MANY[: 11 if written else 10]
    in_instance = {backfill.tags[SOURCE_TAG]: backfill.backfill_id for backfill in billing_env.instance().get_backfills()}
    assert sorted(in_instance) == sorted(submitted), "the report is what the instance holds"
    assert announced(out) == {source_id: in_instance[source_id] for source_id in submitted}
    if not_submitted:
        rest = " ".join(f"--source {source_id}" for source_id in not_submitted)
        assert f"to submit the rest: billing reconcile {rest} --since {since} --until {until}" in err
