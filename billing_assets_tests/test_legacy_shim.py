"""Legacy compatibility through the real pieces: the reference exporter's
`/v1/snapshots/latest` over HTTPS, the real legacy and collection sensors
evaluated against a real instance with a fake clock shared with the exporter,
and their run requests executed as the daemon would (the requested job, its
run config and tags).

The legacy sensor only decides: each tick requests one `legacy_pull_job` run
per source (the pull happens in that run), and for `legacy_latest` sources a
`legacy_billing_job` range run over what earlier pulls staged. So a pull is
billed by the next tick, one tick later than when the sensor pulled itself.

(a) `EXPORTER_BASE_URL` and no registry: the legacy source bills its pulls,
    replays charge nothing twice;
(b) a half-configured environment fails naming the variable;
(c) a `dual` source bills from the window API only and reports the comparison;
(d) the sensor body makes no HTTP request and writes nothing; pulls are runs
    tagged with their source, skipped while the source has a run in flight,
    and a failed pull fails its run naming the source.
"""

from __future__ import annotations

import json
from datetime import timedelta

import dagster as dg
import pytest
from sqlalchemy import func, select

from billing_assets.cli.main import main
from billing_assets.defs.automation.legacy_pull import PULL_OP, legacy_pull_job, pull_run_config
from billing_assets.defs.runs import SOURCE_TAG, TRIGGER_TAG, materialize_range
from billing_assets.core.timeutil import floor_minute, format_rfc3339, now_utc
from billing_assets.definitions import defs
from billing_assets.defs.automation import clock
from billing_assets.defs.automation.collection_sensor import collection_sensor
from billing_assets.defs.automation.legacy_sensor import legacy_billing_job, legacy_latest_sensor
from billing_assets.defs.automation.source_partitions import sync_instance
from billing_assets.defs.resources import BillingStore
from billing_assets.exporter import Faults
from billing_assets.registry.legacy import legacy_source_from_env
from billing_assets.registry.model import RegistryError
from billing_assets.storage import checkpoints
from billing_assets.pipeline.dedup import read_deliveries
from billing_assets.storage.schema import exporter_snapshot_rows, legacy_snapshot_samples
from billing_assets.storage.times import from_micros
from billing_assets_tests.support.db import buckets_by_key, ledger_rows, ledger_sums, nonzero
from billing_assets_tests.support.oracle import expected_buckets, exporter_samples, within
from billing_assets_tests.support.sensors import FakeClock, SensorDriver

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def _legacy_env(monkeypatch, running, billing_start):
    entry = running.entry
    monkeypatch.setenv("EXPORTER_BASE_URL", entry["base_url"])
    monkeypatch.setenv("EXPORTER_NODE_ID", entry["node_id"])
    monkeypatch.setenv("EXPORTER_ENV", entry["env"])
    monkeypatch.setenv("EXPORTER_CA_BUNDLE", entry["ca_bundle_ref"].removeprefix("file:"))
    monkeypatch.setenv("EXPORTER_SERVER_NAME", entry["server_name"])
    monkeypatch.setenv("EXPORTER_CREDENTIAL_REF", entry["credential_ref"])
    monkeypatch.setenv("EXPORTER_BILLING_START", format_rfc3339(billing_start))


def _count(engine, table, source_id):
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table).where(table.c.source_id == source_id)).scalar_one()


def _pulled_times(engine, table, source_id):
    with engine.connect() as connection:
        return set(connection.execute(select(table.c.collected_at).where(table.c.source_id == source_id).distinct()).scalars())


def _triggers(driver) -> list[str]:
    """What each executed run was, in order: `legacy-pull` (a pull run) or `legacy` (a billing range run)."""
    return [tags[TRIGGER_TAG] for tags in driver.executed]


def _billing(driver) -> list[dict]:
    """Tags of the billing range runs executed so far."""
    return [tags for tags in driver.executed if tags[TRIGGER_TAG] == "legacy"]


def _oracle(server, billing_start, start, end, only_at=None):
    shape = server.shape
    samples = exporter_samples(shape.model, shape.node_id, shape.env, start - timedelta(hours=1), end)
    if only_at is not None:
        samples = [s for s in samples if s[4] in only_at]
    return nonzero(within(expected_buckets(samples, billing_start), start, end))


def test_legacy_env_source_bills_pulls_once_through_sensor_runs(billing_env, monkeypatch):
    start = floor_minute(now_utc()) - timedelta(hours=3)
    billing_start = start + timedelta(minutes=1)  # the first pull is a baseline only
    fake = FakeClock(start + timedelta(seconds=20))
    monkeypatch.setattr(clock, "now", fake)
    running = billing_env.fleet.start("legacy", billing_start=billing_start, users=3, clock=fake)
    _legacy_env(monkeypatch, running, billing_start)
    assert not billing_env.sources_file.exists()

    registry = BillingStore().registry()
    (source,) = registry.sources
    assert (source.source_id, source.mode, source.node_id) == ("legacy", "legacy_latest", "node-legacy")
    assert source.billing_start == billing_start and source.auth_mode == "bearer"
    instance = billing_env.instance()
    sync_instance(instance, registry)
    engine = billing_env.engine
    driver = SensorDriver(instance, legacy_latest_sensor)

    assert driver.tick() == [True], "first tick: one pull run, nothing staged yet to bill"
    assert _triggers(driver) == ["legacy-pull"]
    assert _pulled_times(engine, exporter_snapshot_rows, "legacy"), "the pull run staged its snapshot"
    for _ in range(8):
        fake.now += timedelta(seconds=30)
        assert all(driver.tick())
    end = floor_minute(fake.now)
    assert _triggers(driver).count("legacy-pull") == 9, "one pull run per tick"
    billing = _billing(driver)
    assert len(billing) >= 4
    first = billing[0]["dagster/asset_partition_range_start"]
    assert first == f"{start.strftime('%Y-%m-%d-%H:%M')}|legacy", "starts at the first snapshot's minute"
    assert billing[-1]["dagster/asset_partition_range_end"] == f"{(end - timedelta(minutes=1)).strftime('%Y-%m-%d-%H:%M')}|legacy"
    assert set(driver.job_names) == {legacy_pull_job.name, legacy_billing_job.name}

    pulled = _pulled_times(engine, exporter_snapshot_rows, "legacy")
    assert len(pulled) == 9, "one snapshot per pull run, staged for billing"
    assert _count(engine, legacy_snapshot_samples, "legacy") == 0, "legacy_latest pulls are billed, not compared"
    # The last pull (this tick's) lies in the open minute `end`: every closed minute is billed with all its pulls.
    oracle = _oracle(running.server, billing_start, start, end, only_at=pulled)
    assert oracle, "the pulls must carry usage"
    assert nonzero(buckets_by_key(engine, "legacy")) == oracle
    assert nonzero(ledger_sums(engine, "legacy")) == oracle
    with engine.connect() as connection:
        mark = checkpoints.read_checkpoint(connection, "legacy")
    assert mark["last_successful_until"] is None, "/latest never proves completeness"
    assert mark["last_succeeded_at"] == fake.now and mark["last_error"] is None

    # Re-evaluating in the same minute: the sensor finds the last pull in the open minute, so it only
    # pulls (the same snapshot again); nothing new is requested or charged.
    entries = len(ledger_rows(engine, "legacy"))
    assert driver.tick() == [True] and _triggers(driver)[-1] == "legacy-pull"
    assert len(_billing(driver)) == len(billing)
    assert len(ledger_rows(engine, "legacy")) == entries
    # Replaying what already ran (the same billing run again, then the whole range) appends nothing.
    assert driver.execute(dg.RunRequest(job_name=legacy_billing_job.name, tags=billing[-1]))
    assert materialize_range(defs, instance, "legacy", start, end, log_level="ERROR").success
    assert len(ledger_rows(engine, "legacy")) == entries
    assert nonzero(ledger_sums(engine, "legacy")) == oracle

    # The next minute is billed (then pulled) with the re-staged snapshot deduplicated away.
    fake.now += timedelta(seconds=45)
    assert driver.tick() == [True, True] and _triggers(driver)[-2:] == ["legacy", "legacy-pull"]
    pulled = _pulled_times(engine, exporter_snapshot_rows, "legacy")
    assert nonzero(ledger_sums(engine, "legacy")) == _oracle(running.server, billing_start, start, floor_minute(fake.now), pulled)

    # A registry file, once it exists, wins over the environment.
    billing_env.write_registry([dict(running.entry, source_id="from-file", node_id="node-other")])
    assert [s.source_id for s in BillingStore().registry().sources] == ["legacy", "from-file"]
    assert BillingStore().registry().get("legacy").mode == "window"


def test_legacy_env_errors_name_the_variable_and_never_the_secret(monkeypatch, tmp_path):
    monkeypatch.setenv("BILLING_SOURCES_FILE", str(tmp_path / "absent.yaml"))
    for name in ("EXPORTER_BASE_URL", "EXPORTER_NODE_ID", "EXPORTER_SERVER_NAME", "EXPORTER_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RegistryError, match="cannot read registry"):
        BillingStore().registry()  # no file, no EXPORTER_BASE_URL: still an error, never "no sources"

    env = {
        "EXPORTER_BASE_URL": "https://10.0.0.7:9443",
        "EXPORTER_ENV": "prod",
        "EXPORTER_CA_BUNDLE": "/etc/billing/ca.pem",
        "EXPORTER_CREDENTIAL_REF": "env:EXPORTER_TOKEN",
        "EXPORTER_TOKEN": "s3cret-token-value",
        "EXPORTER_BILLING_START": "2026-11-01T00:00:00Z",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(RegistryError) as missing:
        BillingStore().registry()
    assert "EXPORTER_NODE_ID" in str(missing.value)
    context = dg.build_sensor_context(resources={"billing": BillingStore()}, instance=dg.DagsterInstance.ephemeral())
    skipped = legacy_latest_sensor(context)
    assert isinstance(skipped, dg.SkipReason) and "EXPORTER_NODE_ID" in skipped.skip_message

    source = legacy_source_from_env(dict(env, EXPORTER_NODE_ID="node-7"))
    assert source.server_name == "10.0.0.7", "server_name defaults to the URL's host"
    assert source.ca_bundle_ref == "file:/etc/billing/ca.pem" and source.credential_ref == "env:EXPORTER_TOKEN"

    with pytest.raises(RegistryError) as plain:
        legacy_source_from_env(dict(env, EXPORTER_NODE_ID="n", EXPORTER_BASE_URL="http://user:s3cret-token-value@10.0.0.7"))
    assert "EXPORTER_BASE_URL" in str(plain.value) and "s3cret" not in str(plain.value)
    with pytest.raises(RegistryError, match="EXPORTER_AUTH_MODE"):
        legacy_source_from_env(dict(env, EXPORTER_NODE_ID="n", EXPORTER_AUTH_MODE="none"))
    assert legacy_source_from_env({k: v for k, v in env.items() if k != "EXPORTER_BASE_URL"}) is None


def _status_json(capsys) -> dict:
    main(["status", "--json"])
    out = capsys.readouterr().out
    return {s["source_id"]: s for s in json.loads(out)["sources"]}


def test_dual_source_bills_window_only_and_reports_differences(billing_env, monkeypatch, capsys):
    monkeypatch.setenv("BILLING_COLLECT_LAG", "30s")
    start = floor_minute(now_utc()) - timedelta(hours=3)
    fake = FakeClock(start + timedelta(seconds=20))
    monkeypatch.setattr(clock, "now", fake)
    running = billing_env.fleet.start("dual-1", billing_start=start, users=3, clock=fake, mode="dual")
    billing_env.write_registry()
    billing_env.sync_partitions()
    instance = billing_env.instance()
    engine = billing_env.engine
    legacy, collect = SensorDriver(instance, legacy_latest_sensor), SensorDriver(instance, collection_sensor)

    for _ in range(6):
        assert legacy.tick() == [True], "one pull run per tick"
        fake.now += timedelta(seconds=30)
    assert _triggers(legacy) == ["legacy-pull"] * 6, "dual pulls are compared, never billed: no billing runs"
    fake.now += timedelta(minutes=1)
    assert collect.tick() == [True]
    end = floor_minute(fake.now - timedelta(seconds=30))

    pulled = _pulled_times(engine, legacy_snapshot_samples, "dual-1")
    assert len(pulled) == 6
    window_only = _oracle(running.server, start, start, end)
    assert nonzero(ledger_sums(engine, "dual-1")) == window_only, "ledger equals the window-only result"
    with engine.connect() as connection:  # a dual source's window fetches are kept as pages, not staged
        assert connection.execute(select(func.count()).select_from(exporter_snapshot_rows)).scalar_one() == 0
        delivered = read_deliveries(connection, "dual-1", start - timedelta(hours=1), end + timedelta(hours=1))
    staged_at = {from_micros(at) for at in delivered.at.tolist()}
    staged = len(delivered)
    assert staged == sum(1 for _ in exporter_samples(running.server.shape.model, "n", "e", start - timedelta(minutes=1), end))
    assert pulled <= staged_at, "the window API delivered every pulled snapshot"

    report = _status_json(capsys)["dual-1"]["dual_read"]
    legacy_samples = _count(engine, legacy_snapshot_samples, "dual-1")
    assert report["legacy_samples"] == legacy_samples > 0
    assert (report["matched"], report["missing"], report["mismatched"]) == (legacy_samples, 0, 0)
    assert report["series_minutes"] == report["series_minutes_with_bucket"] > 0
    assert report["differing_minutes"] == []

    # Conflicting totals on /latest only (the window data is fetched after the fault is gone).
    running.server.faults = Faults(conflicting_totals=True)
    for _ in range(4):
        fake.now += timedelta(seconds=15)
        assert legacy.tick() == [True]
    assert _billing(legacy) == [], "still no billing run from the legacy sensor"
    running.server.faults = Faults()
    fake.now += timedelta(minutes=2)  # every faulty snapshot now lies before the window checkpoint
    assert collect.tick() == [True]
    report = _status_json(capsys)["dual-1"]["dual_read"]
    assert report["mismatched"] == 2, "two of four consecutive 15 s snapshots fall on even seconds"
    assert report["missing"] == 0 and report["differing_minutes"]
    end = floor_minute(fake.now - timedelta(seconds=30))
    assert nonzero(ledger_sums(engine, "dual-1")) == _oracle(running.server, start, start, end), "no double charge"
    main(["status"])
    assert "2 mismatched" in capsys.readouterr().out


def test_late_legacy_snapshot_reopens_its_minute(billing_env, monkeypatch):
    """Snapshots published 70 s late land in minutes already requested: the next run must
    recompute those minutes, or the delta up to the late sample would be lost for good."""
    start = floor_minute(now_utc()) - timedelta(hours=3)
    fake = FakeClock(start + timedelta(seconds=80))
    monkeypatch.setattr(clock, "now", fake)
    running = billing_env.fleet.start("legacy", billing_start=start, users=2, clock=fake, faults=Faults(late_seconds=70))
    _legacy_env(monkeypatch, running, start)
    instance = billing_env.instance()
    sync_instance(instance, BillingStore().registry())
    driver = SensorDriver(instance, legacy_latest_sensor)
    for _ in range(6):
        assert all(driver.tick())
        fake.now += timedelta(seconds=30)
    assert all(driver.tick()), "this tick bills what the last pull staged"
    billing = _billing(driver)
    starts = [tags["dagster/asset_partition_range_start"] for tags in billing]
    ends = [tags["dagster/asset_partition_range_end"] for tags in billing]
    assert any(s <= e for s, e in zip(starts[1:], ends)), "some range must start inside the previous one"
    engine = billing_env.engine
    pulled = _pulled_times(engine, exporter_snapshot_rows, "legacy")
    end = floor_minute(fake.now - timedelta(seconds=30))
    oracle = _oracle(running.server, start, start, end, only_at=pulled)
    assert oracle and nonzero(ledger_sums(engine, "legacy")) == oracle

    # The last pull (4:20 now, 70 s late) staged 3:00, a minute already requested: the next tick re-opens it.
    # Its own pull, 2 s later, gets the same 3:00 snapshot again; that re-pull re-opens nothing.
    fake.now += timedelta(seconds=2)
    assert driver.tick() == [True, True] and _triggers(driver)[-2:] == ["legacy", "legacy-pull"]
    reopened = _billing(driver)[-1]["dagster/asset_partition_range_start"]
    assert reopened == f"{(floor_minute(fake.now) - timedelta(minutes=1)).strftime('%Y-%m-%d-%H:%M')}|legacy"
    fake.now += timedelta(seconds=2)
    assert driver.tick() == [True] and _triggers(driver)[-1] == "legacy-pull", "a re-pulled snapshot re-opens nothing"
    pulled = _pulled_times(engine, exporter_snapshot_rows, "legacy")
    oracle = _oracle(running.server, start, start, floor_minute(fake.now), only_at=pulled)
    assert nonzero(ledger_sums(engine, "legacy")) == oracle, "the re-opened minute now bills its late snapshot"


def _stored(engine) -> tuple:
    """Everything a legacy pull writes: staged rows, comparison rows, checkpoints."""
    with engine.connect() as connection:
        counts = tuple(
            connection.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (exporter_snapshot_rows, legacy_snapshot_samples)
        )
        return counts, checkpoints.read_all(connection)


def _billing_tags(request: dg.RunRequest) -> dict:
    return {key: value for key, value in request.tags.items() if key.startswith("billing/")}


def test_legacy_sensor_only_requests_pulls_run_as_runs_tagged_with_their_source(billing_env, monkeypatch):
    """The sensor body makes no HTTP request and writes nothing; the pulls are runs the per-source
    queue limit sees (`billing/source`), skipped while the source has a run in flight, and a failed
    pull fails its run with a message naming the source (recorded in the checkpoint for legacy_latest)."""
    start = floor_minute(now_utc()) - timedelta(hours=3)
    fake = FakeClock(start + timedelta(seconds=20))
    monkeypatch.setattr(clock, "now", fake)
    servers = {
        sid: billing_env.fleet.start(sid, billing_start=start, users=2, clock=fake, mode=mode).server
        for sid, mode in (("legacy-1", "legacy_latest"), ("dual-1", "dual"))
    }
    billing_env.write_registry()
    billing_env.sync_partitions()
    instance, engine = billing_env.instance(), billing_env.engine
    http: list[tuple[str, str]] = []
    for sid, server in servers.items():
        def counting(path, raw_query, authorization, _dispatch=server.dispatch, _sid=sid):
            http.append((_sid, path))
            return _dispatch(path, raw_query, authorization)

        monkeypatch.setattr(server, "dispatch", counting)
    driver = SensorDriver(instance, legacy_latest_sensor)

    before = _stored(engine)
    requests = driver.evaluate()
    assert http == [] and _stored(engine) == before, "the tick itself neither calls an exporter nor writes"
    assert [(r.job_name, _billing_tags(r), r.run_config) for r in requests] == [
        (legacy_pull_job.name, {SOURCE_TAG: sid, TRIGGER_TAG: "legacy-pull"}, pull_run_config(sid))
        for sid in ("legacy-1", "dual-1")
    ]
    assert all(driver.execute(request) for request in requests)
    assert sorted(http) == [("dual-1", "/v1/snapshots/latest"), ("legacy-1", "/v1/snapshots/latest")], "one pull per run"
    assert _count(engine, exporter_snapshot_rows, "legacy-1") > 0 and _count(engine, legacy_snapshot_samples, "dual-1") > 0
    for sid in servers:
        (record,) = instance.get_run_records(filters=dg.RunsFilter(tags={SOURCE_TAG: sid}))
        assert record.dagster_run.job_name == legacy_pull_job.name
        assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        assert record.dagster_run.tags[TRIGGER_TAG] == "legacy-pull"

    # A minute later legacy-1's staged pull is due for billing; its queued run holds back both of its requests.
    fake.now += timedelta(minutes=1)
    queued = instance.create_run_for_job(driver.job, tags={SOURCE_TAG: "legacy-1"})
    calls, before = len(http), _stored(engine)
    requests = driver.evaluate()
    assert len(http) == calls and _stored(engine) == before
    assert [(r.job_name, r.tags[SOURCE_TAG]) for r in requests] == [(legacy_pull_job.name, "dual-1")]
    instance.delete_run(queued.run_id)
    requests = driver.evaluate()
    assert len(http) == calls and _stored(engine) == before
    assert [(r.job_name, r.tags[SOURCE_TAG], r.tags[TRIGGER_TAG]) for r in requests] == [
        (legacy_billing_job.name, "legacy-1", "legacy"),
        (legacy_pull_job.name, "legacy-1", "legacy-pull"),
        (legacy_pull_job.name, "dual-1", "legacy-pull"),
    ]
    assert requests[0].tags["dagster/asset_partition_range_start"] == f"{start.strftime('%Y-%m-%d-%H:%M')}|legacy-1"
    assert all(driver.execute(request) for request in requests)

    # A failing exporter fails the pull run, naming the source.
    marks = _stored(engine)[1]
    for server in servers.values():
        server.faults = Faults(error_rate=1.0)
    for sid in servers:
        result = defs.resolve_job_def(legacy_pull_job.name).execute_in_process(
            instance=instance, run_config={**pull_run_config(sid), **QUIET}, tags={SOURCE_TAG: sid, TRIGGER_TAG: "legacy-pull"},
            raise_on_error=False,
        )
        assert not result.success
        failure = result.failure_data_for_node(PULL_OP)
        assert f"legacy pull of source {sid!r} failed" in failure.user_failure_data.description
    after = _stored(engine)[1]
    assert "503" in after["legacy-1"]["last_error"], "legacy_latest pull failures go to the checkpoint, as before"
    assert after.get("dual-1") == marks.get("dual-1"), "a dual source's checkpoint belongs to window collection"
