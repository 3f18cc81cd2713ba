"""Concurrency and crashes on a real PostgreSQL, with real parallel processes.

- Several processes run the same range, and overlapping ranges, of one source
  at the same moment (real Dagster runs): nothing is charged twice.
- Without the advisory lock, the unique (bucket key, entry_seq) constraint
  alone stops a racing duplicate charge, and the ledger step's retry appends
  only what is still missing.
- A worker process is SIGKILLed while its bucket or ledger write is in
  flight (it is made to wait on a row lock the test holds, then killed):
  the transaction vanishes whole, and the next run completes the work.

The workers are this module run as a script (`python -m ...`), so they are
separate interpreters with their own connections, exactly like two Dagster
run workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text

from billing_assets.core.pricing import DEFAULT_PRICING
from billing_assets.core.timeutil import parse_rfc3339
from billing_assets.pipeline.bucket import bucket_slice
from billing_assets.pipeline.charge import charge_slice
from billing_assets.pipeline.dedup import dedup_slice
from billing_assets.pipeline.fetch import fetch_slice
from billing_assets.pipeline.slices import Slice
from billing_assets.registry.model import Source
from billing_assets.storage.engine import get_engine, migrate, reset_caches
from billing_assets.storage.schema import billing_ledger
from billing_assets_tests.support.db import buckets_by_key, ledger_rows
from billing_assets_tests.support.oracle import expected_buckets, ledger_problems, within
from billing_assets_tests.support.scripted_exporter import Script, ScriptedItem, ScriptedSample
from billing_assets_tests.support.waiting import wait_until

pytestmark = pytest.mark.postgres

MINUTE = timedelta(minutes=1)
WAIT_S = 180  # upper bound for a condition to appear; never asserted as a duration


def history(source_id: str, node_id: str, start: datetime, minutes: int, late_every: int = 0) -> Script:
    """Three users, a sample every 10 s, a reset in the middle; every `late_every`-th item arrives in phase 1."""
    items = []
    for k in range(minutes * 6):
        at = start + timedelta(seconds=10 * k + 3)
        samples = tuple(
            ScriptedSample(f"u-{user}", "vless-in", (k % 20) * 1000 * (user + 1) + user, (k % 20) * 7000 + k)
            for user in range(3)
        )
        late = 1 if late_every and k % late_every == late_every - 1 else 0
        items.append(ScriptedItem(at, samples, visible_from=late))
    return Script(source_id=source_id, node_id=node_id, items=items, page_sizes=(5, 3), page_overlap=1)


def oracle_for(script: Script, start: datetime, end: datetime, billing_start: datetime) -> dict:
    rows = [
        (script.node_id, script.env, s.uuid, s.inbound_tag, item.collected_at, s.uplink_bytes_total, s.downlink_bytes_total)
        for item in script.items if item.visible_from <= script.phase
        for s in item.samples
    ]
    return within(expected_buckets(rows, billing_start), start, end)


# -- worker processes ---------------------------------------------------------------------


def worker_main(argv: list[str]) -> None:
    """`python -m billing_assets_tests.test_concurrency_postgres MODE SOURCE START END [GO_FILE READY_FILE]`."""
    mode, source_id, start, end = argv[:4]
    start_at, end_at = parse_rfc3339(start), parse_rfc3339(end)
    if mode == "dagster":
        import dagster as dg

        from billing_assets.defs.runs import materialize_range
        from billing_assets.definitions import defs
        from billing_assets.defs.partitions import SOURCES_PARTITION

        instance = dg.DagsterInstance.get()
        instance.add_dynamic_partitions(SOURCES_PARTITION, [source_id])
        go, ready = Path(argv[4]), Path(argv[5])
        ready.write_text("ready")
        while not go.exists():
            time.sleep(0.02)
        result = materialize_range(defs, instance, source_id, start_at, end_at, log_level="WARNING")
        sys.exit(0 if result.success else 1)
    from billing_assets.registry.model import load_registry

    source = load_registry(os.environ["BILLING_SOURCES_FILE"]).get(source_id)
    engine = migrate(get_engine())
    work = Slice(source_id, start_at, end_at)
    fetch_slice(engine, source, work)
    dedup_slice(engine, source, work)
    bucket_slice(engine, source, work)
    charge_slice(engine, source, work, DEFAULT_PRICING)


class Workers:
    """Starts worker processes for one test and always reaps them."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env, self.procs = root, env, []

    def start(self, mode: str, source_id: str, start: datetime, end: datetime, *extra: str, app: str = "billing-worker", home: str | None = None):
        env = dict(self.env)
        env["BILLING_DATABASE_URL"] = f"{env['BILLING_DATABASE_URL']}?application_name={app}"
        if home:
            env["DAGSTER_HOME"] = home
        args = [sys.executable, "-m", "billing_assets_tests.test_concurrency_postgres", mode, source_id,
                start.isoformat(), end.isoformat(), *extra]
        proc = subprocess.Popen(args, env=env, cwd=str(Path(__file__).parents[1]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def finish(self, proc) -> tuple[int, str]:
        output, _ = proc.communicate(timeout=WAIT_S * 2)
        return proc.returncode, output.decode(errors="replace")[-3000:]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def pg(postgres_server, tmp_path, monkeypatch, upstream):
    """A fresh PostgreSQL billing database, env pointing at it, and a worker launcher."""
    url = postgres_server.create_database()
    sources_file = tmp_path / "sources.yaml"
    monkeypatch.setenv("BILLING_DATABASE_URL", url)
    monkeypatch.setenv("BILLING_SOURCES_FILE", str(sources_file))
    reset_caches()
    engine = migrate(get_engine(url))
    env = {**os.environ, "DAGSTER_TELEMETRY_DISABLED": "1"}
    workers = Workers(tmp_path, env)
    yield url, engine, sources_file, workers
    workers.close()
    reset_caches()


def register(upstream, sources_file: Path, script: Script, billing_start: datetime) -> Source:
    upstream.server.install(script)
    entry = upstream.registry_entry(script, billing_start)
    sources_file.write_text(yaml.safe_dump({"sources": [entry]}, sort_keys=False))
    return Source.model_validate(entry)


def dagster_home(root: Path, name: str) -> str:
    home = root / name
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return str(home)


def assert_billed_once(engine, source_id: str, expected: dict) -> None:
    assert buckets_by_key(engine, source_id) == expected
    assert ledger_problems(expected, ledger_rows(engine, source_id)) == []


# -- tests --------------------------------------------------------------------------------


def test_parallel_runs_of_same_and_overlapping_ranges_charge_once(pg, upstream, recent_hour, tmp_path):
    url, engine, sources_file, workers = pg
    start, end = recent_hour, recent_hour + 4 * MINUTE
    script = history("cc-1", "node-cc-1", start, 4)
    register(upstream, sources_file, script, start)
    go = tmp_path / "go"
    ranges = [(start, start + 3 * MINUTE), (start, start + 3 * MINUTE), (start + MINUTE, end)]
    procs = []
    for n, (a, b) in enumerate(ranges):
        home = dagster_home(tmp_path, f"home{n}")
        procs.append((workers.start("dagster", "cc-1", a, b, str(go), str(tmp_path / f"ready{n}"), home=home), n))
    wait_until(lambda: all((tmp_path / f"ready{n}").exists() for n in range(len(ranges))), "workers to load", WAIT_S)
    go.write_text("go")  # release all runs at once
    for proc, n in procs:
        code, output = workers.finish(proc)
        assert code == 0, output

    expected = oracle_for(script, start, end, start)
    assert len(expected) == 12
    assert_billed_once(engine, "cc-1", expected)


def test_unique_entry_seq_stops_a_racing_charge_without_the_lock(pg, upstream, recent_hour, monkeypatch):
    """Two ledger writers that both read "never charged": the database, not Python, keeps one charge."""
    url, engine, sources_file, workers = pg
    start = recent_hour
    script = history("cc-2", "node-cc-2", start, 1)
    source = register(upstream, sources_file, script, start)
    work = Slice("cc-2", start, start + MINUTE)
    fetch_slice(engine, source, work)
    dedup_slice(engine, source, work)
    bucket_slice(engine, source, work)
    bucket = next(iter(buckets_by_key(engine, "cc-2")))

    monkeypatch.setattr("billing_assets.pipeline.charge.source_lock", lambda *args: None)
    racer = create_engine(url)
    with racer.connect() as other:
        transaction = other.begin()
        other.execute(billing_ledger.insert(), [{
            "node_id": bucket[0], "env": bucket[1], "uuid": bucket[2], "inbound_tag": bucket[3], "bucket_start": bucket[4],
            "entry_seq": 1, "source_id": "cc-2", "email": "x", "uplink_bytes": 1, "downlink_bytes": 1,
            "amount": 0, "amount_nanos": 0, "currency": "USD", "plan": "standard", "entry_kind": "charge",
            "created_at": start, "run_id": "racer",
        }])
        outcome: dict = {}
        charging = threading.Thread(target=lambda: outcome.update(stats=charge_slice(engine, source, work, DEFAULT_PRICING)))
        charging.start()
        wait_until(lambda: _waiting_on_lock(engine, "billing_ledger"), "the ledger insert to wait for the racer", WAIT_S)
        transaction.commit()  # the racer's charge lands first; ours now violates the unique key
        charging.join(WAIT_S)
    racer.dispose()
    assert "stats" in outcome, "charge_slice must retry after the unique violation, not fail"
    rows = ledger_rows(engine, "cc-2")
    mine = [r for r in rows if (r["node_id"], r["env"], r["uuid"], r["inbound_tag"], r["bucket_start"]) == bucket]
    assert [r["entry_kind"] for r in mine] == ["charge", "correction"], "the retry appends only the difference"
    # The racer's bogus (1, 1) charge stands (append-only); our retry corrected it to the bucket.
    assert ledger_problems(oracle_for(script, start, start + MINUTE, start), rows) == []


def test_sample_primary_key_stops_a_racing_dedup_without_the_lock(pg, upstream, recent_hour, monkeypatch):
    """Two dedup writers that both see "not stored yet": the unique keys, not Python, store each series and sample once."""
    url, engine, sources_file, workers = pg
    start = recent_hour
    script = history("cc-5", "node-cc-5", start, 2)
    source = register(upstream, sources_file, script, start)
    work = Slice("cc-5", start, start + 2 * MINUTE)
    fetch_slice(engine, source, work)

    monkeypatch.setattr("billing_assets.storage.samples.source_lock", lambda *args: None)
    racer = create_engine(url)
    with racer.connect() as other:
        transaction = other.begin()
        from billing_assets.pipeline.dedup import read_deliveries
        from billing_assets.storage.samples import store_deliveries

        since = work.start - source.overlap
        delivered = read_deliveries(other, "cc-5", since, work.end)
        first = store_deliveries(other, "cc-5", since, work.end, start, start - timedelta(days=32), delivered)
        assert first.inserted > 0  # the racer holds every sample of the window, uncommitted
        outcome: dict = {}
        deduping = threading.Thread(target=lambda: outcome.update(stats=dedup_slice(engine, source, work)))
        deduping.start()
        # Ours waits at its first insert the racer's uncommitted rows conflict with: the new series
        # of the dictionary (usage_series) or, were they already stored, the samples (usage_sample_rows).
        wait_until(lambda: _waiting_on_lock(engine, "COPY usage_s"), "our insert to wait for the racer's rows", WAIT_S)
        transaction.commit()  # the racer's rows land first; ours now violate a unique key
        deduping.join(WAIT_S)
    racer.dispose()
    assert "stats" in outcome, "dedup_slice must retry after the unique violation, not fail"
    assert outcome["stats"].inserted == 0, "the retry finds every sample stored and inserts none"
    assert _count(engine, "SELECT COUNT(*) FROM usage_samples WHERE source_id = 'cc-5'") == first.inserted
    bucket_slice(engine, source, work)
    charge_slice(engine, source, work, DEFAULT_PRICING)
    assert_billed_once(engine, "cc-5", oracle_for(script, start, start + 2 * MINUTE, start))


def _count(engine, sql: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text(sql)).scalar_one())


def _waiting_on_lock(engine, table: str, app: str | None = None) -> bool:
    """Whether a backend (of `app`, or any other) waits on a lock in a statement naming `table`.

    A fresh connection per poll: pg_stat_activity is a snapshot per transaction.
    """
    sql = "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE :pattern"
    sql += " AND application_name = :app" if app else " AND pid <> pg_backend_pid()"
    with engine.connect() as connection:
        return bool(connection.execute(text(sql), {"pattern": f"%{table}%", "app": app}).scalar_one())


def _backend_gone(engine, app: str) -> bool:
    with engine.connect() as connection:
        return not connection.execute(
            text("SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = :app"), {"app": app}
        ).scalar_one()


@pytest.mark.parametrize("kill_during", ["usage_minute_buckets", "billing_ledger"])
def test_worker_killed_mid_write_leaves_database_consistent(pg, upstream, recent_hour, kill_during):
    url, engine, sources_file, workers = pg
    start, end = recent_hour, recent_hour + 3 * MINUTE
    script = history("cc-3", "node-cc-3", start, 3, late_every=4)
    source = register(upstream, sources_file, script, start)
    work = Slice("cc-3", start, end)
    for step in (fetch_slice, dedup_slice, bucket_slice):
        step(engine, source, work)
    charge_slice(engine, source, work, DEFAULT_PRICING)
    before_buckets, before_ledger = buckets_by_key(engine, "cc-3"), ledger_rows(engine, "cc-3")
    assert before_buckets == oracle_for(script, start, end, start)

    script.phase = 1  # late items change buckets: the worker has bucket rows and corrections to write
    changed = oracle_for(script, start, end, start)
    victim = next(key for key in changed if changed[key] != before_buckets.get(key))
    app = f"victim-{kill_during}"
    with engine.connect() as blocker:
        transaction = blocker.begin()
        if kill_during == "usage_minute_buckets":
            blocker.execute(
                text("SELECT 1 FROM usage_minute_buckets WHERE node_id = :n AND env = :e AND uuid = :u "
                     "AND inbound_tag = :t AND bucket_start = :b FOR UPDATE"),
                dict(zip("neutb", victim)),
            )
        else:
            last = max(r["entry_seq"] for r in before_ledger if (r["node_id"], r["env"], r["uuid"], r["inbound_tag"], r["bucket_start"]) == victim)
            blocker.execute(billing_ledger.insert(), [{
                "node_id": victim[0], "env": victim[1], "uuid": victim[2], "inbound_tag": victim[3], "bucket_start": victim[4],
                "entry_seq": last + 1, "source_id": "cc-3", "email": "x", "uplink_bytes": 0, "downlink_bytes": 0,
                "amount": 0, "amount_nanos": 0, "currency": "USD", "plan": "standard", "entry_kind": "correction",
                "created_at": start, "run_id": "blocker",
            }])
        proc = workers.start("steps", "cc-3", start, end, app=app)
        def blocked() -> bool:
            assert proc.poll() is None, workers.finish(proc)[1]
            return _waiting_on_lock(engine, kill_during, app)

        wait_until(blocked, f"the worker to block inside its {kill_during} write", WAIT_S)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        transaction.rollback()
    wait_until(lambda: _backend_gone(engine, app), "the killed worker's backend to end", WAIT_S)

    # Nothing of the killed transaction is visible; the ledger still matches the buckets it charged.
    after_buckets, after_ledger = buckets_by_key(engine, "cc-3"), ledger_rows(engine, "cc-3")
    assert after_ledger == before_ledger
    if kill_during == "usage_minute_buckets":
        assert after_buckets == before_buckets
        assert ledger_problems(before_buckets, after_ledger) == []
    else:
        assert after_buckets == changed, "the bucket step committed before the kill"

    # The next run completes the work, once.
    code, output = workers.finish(workers.start("steps", "cc-3", start, end, app="rerun"))
    assert code == 0, output
    assert_billed_once(engine, "cc-3", changed)


if __name__ == "__main__":
    worker_main(sys.argv[1:])
