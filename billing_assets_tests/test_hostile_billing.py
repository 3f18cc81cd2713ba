"""Hostile counters and failures past the transport, through real runs on both databases.

The transport cases (drip, bombs, cursors, envelope) are in
test_hostile_transport.py. Here: counters an exporter can send inside a
valid envelope that no link could have carried (2**62, 2**63-1, a first
sample of 2**63-1), the operator's release of a held delta, failures of
steps after fetch being recorded against their source, and a dripping
exporter not locking other sources out of the embedded database.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import dagster as dg
import pytest
from sqlalchemy import select, text

from billing_assets.cli.main import main as billing
from billing_assets.defs.runs import materialize_range
from billing_assets.definitions import defs
from billing_assets.pipeline.fetch import fetch_slice
from billing_assets.pipeline.slices import Slice
from billing_assets.registry.model import load_registry
from billing_assets.storage.schema import billing_ledger, usage_minute_buckets, usage_quarantine
from billing_assets.transport.client import RetryPolicy
from billing_assets_tests.support.db import buckets_by_key, ledger_sums
from billing_assets_tests.support.hostile_exporter import Drip, HostileExporter
from billing_assets_tests.support.oracle import expected_buckets, within
from billing_assets_tests.support.outcomes import check_results, checkpoint, serve, window_keys
from billing_assets_tests.support.scripted_exporter import Script, ScriptedItem, ScriptedSample
from billing_assets_tests.support.waiting import wait_until

MINUTE = timedelta(minutes=1)
INT64_MAX = 2**63 - 1


def _items(minute, series: dict[str, list[tuple[int, int]]], seconds=(10, 25, 40)) -> list[ScriptedItem]:
    """One snapshot per offset; `series` maps uuid -> (uplink, downlink) totals per snapshot."""
    return [
        ScriptedItem(minute + timedelta(seconds=s), tuple(ScriptedSample(uuid, "vless-in", *totals[i]) for uuid, totals in series.items()))
        for i, s in enumerate(seconds)
    ]


def _all_rows_sane(engine, source_id):
    """No bucket or ledger row negative or beyond what a counter could carry."""
    with engine.connect() as connection:
        for table in (usage_minute_buckets, billing_ledger):
            for row in connection.execute(select(table).where(table.c.source_id == source_id)).mappings():
                assert 0 <= row["uplink_bytes"] < 2**56 and 0 <= row["downlink_bytes"] < 2**56, dict(row)
                if table is billing_ledger:
                    assert row["amount_nanos"] >= 0


def _oracle(script: Script, billing_start, start, end):
    rows = [
        (script.node_id, script.env, s.uuid, s.inbound_tag, item.collected_at, s.uplink_bytes_total, s.downlink_bytes_total)
        for item in script.items for s in item.samples
    ]
    return within(expected_buckets(rows, billing_start), start, end)


def _json(capsys, *argv) -> dict:
    capsys.readouterr()
    assert billing(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_counter_overflow_is_held_and_the_rest_of_the_source_is_billed(billing_env, upstream, recent_hour, capsys):
    """2**62, 2**63-1, 2**62 within a minute: a -4.6e18 bucket on SQLite and `bigint out of range` on
    PostgreSQL before; now held in usage_quarantine, the other user billed, the check red, status says so."""
    start = recent_hour
    script = Script(source_id="ov-1", node_id="node-ov-1", items=_items(start, {
        "u-big": [(2**62, 2**62), (INT64_MAX, INT64_MAX), (2**62, 2**62)],
        "u-ok": [(1_000, 5_000), (2_000, 9_000), (3_500, 12_000)],
    }))
    source = serve(billing_env, upstream, script, start - MINUTE)
    result = materialize_range(defs, billing_env.instance(), source.source_id, start, start + MINUTE, raise_on_error=False)
    assert result.success, "an implausible counter is held, it does not fail the source's billing"
    engine = billing_env.engine
    _all_rows_sane(engine, "ov-1")
    buckets = buckets_by_key(engine, "ov-1")
    assert buckets == _oracle(script, start - MINUTE, start, start + MINUTE)
    assert buckets[("node-ov-1", "test", "u-ok", "vless-in", start)] == (3_500, 12_000)
    assert buckets[("node-ov-1", "test", "u-big", "vless-in", start)] == (0, 0)
    assert ledger_sums(engine, "ov-1") == {k: v for k, v in buckets.items() if v != (0, 0)}
    with engine.connect() as connection:
        holds = connection.execute(select(usage_quarantine).order_by(usage_quarantine.c.collected_at)).mappings().all()
    assert [(h["uuid"], h["held_uplink_bytes"], h["elapsed_us"]) for h in holds] == [
        ("u-big", 2**62, None), ("u-big", INT64_MAX - 2**62, 15_000_000), ("u-big", 2**62, 15_000_000),
    ]
    by_key = check_results(result)["no_implausible_usage"]
    assert list(by_key) == window_keys("ov-1", start, start + MINUTE), "one evaluation, on the run's one window"
    check = by_key[window_keys("ov-1", start, start + MINUTE)[0]]
    assert check.target_materialization_data.run_id == result.run_id
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR and check.metadata["held"].value == 3
    assert "exceeds 12,500,000,000 B/s" in check.description

    status = _json_status(capsys)
    report = next(s for s in status["sources"] if s["source_id"] == "ov-1")
    assert report["held"] == 3 and any("implausible" in p for p in report["problems"])

    ledger_before = ledger_sums(engine, "ov-1")
    again = materialize_range(defs, billing_env.instance(), source.source_id, start, start + MINUTE)
    assert again.success and ledger_sums(engine, "ov-1") == ledger_before
    with engine.connect() as connection:
        assert len(connection.execute(select(usage_quarantine)).all()) == 3, "a replay holds the same three, once"

    # 2**62 is no counter anyone used: it cannot be released into billing.
    capsys.readouterr()
    assert billing(["quarantine", "release", "--id", str(holds[0]["id"]), "--by", "ops", "--reason", "test"]) == 2
    assert "cannot be released" in capsys.readouterr().err


def _json_status(capsys) -> dict:
    capsys.readouterr()
    billing(["status", "--json"])  # exit 1 is fine here: the source is only minutes old
    return json.loads(capsys.readouterr().out)


def test_a_held_delta_is_billed_once_after_an_operator_releases_it(billing_env, upstream, recent_hour, capsys):
    """A source capped at 1,000 B/s jumps by 1 MB in 15 s: held, listed, released by name, then billed once."""
    start = recent_hour
    script = Script(source_id="ov-2", node_id="node-ov-2", items=_items(start, {
        "u-1": [(10, 10), (1_000_010, 20), (1_000_020, 30)],
    }))
    source = serve(billing_env, upstream, script, start - MINUTE, max_bytes_per_second=1000)
    instance, engine = billing_env.instance(), billing_env.engine
    assert materialize_range(defs, instance, source.source_id, start, start + MINUTE).success
    key = ("node-ov-2", "test", "u-1", "vless-in", start)
    assert buckets_by_key(engine, "ov-2")[key] == (20, 30), "the 1 MB step is held"

    listed = _json(capsys, "quarantine", "list", "--source", "ov-2", "--json")["holds"]
    assert [(h["held_uplink_bytes"], h["held_downlink_bytes"]) for h in listed] == [(1_000_000, 0)]
    assert "exceeds 1,000 B/s" in listed[0]["reason"]

    capsys.readouterr()
    assert billing(["quarantine", "release", "--id", str(listed[0]["id"]), "--by", "alice", "--reason", ""]) == 2
    assert billing(["quarantine", "release", "--id", "999999", "--by", "alice", "--reason", "x"]) == 2
    assert billing(["quarantine", "release", "--id", str(listed[0]["id"]), "--by", "alice", "--reason", "link upgrade"]) == 0
    printed = capsys.readouterr().out
    assert "billing reconcile --source ov-2" in printed
    assert billing(["quarantine", "release", "--id", str(listed[0]["id"]), "--by", "bob", "--reason", "again"]) == 2

    assert materialize_range(defs, instance, source.source_id, start, start + MINUTE).success
    assert buckets_by_key(engine, "ov-2")[key] == (1_000_020, 30)
    with engine.connect() as connection:
        entries = connection.execute(select(billing_ledger).where(billing_ledger.c.source_id == "ov-2")).mappings().all()
        row = connection.execute(select(usage_quarantine)).mappings().one()
    assert [(e["entry_kind"], e["uplink_bytes"]) for e in entries] == [("charge", 20), ("correction", 1_000_000)]
    assert (row["released_by"], row["release_reason"]) == ("alice", "link upgrade")
    assert materialize_range(defs, instance, source.source_id, start, start + MINUTE).success
    assert len(ledger_sums(engine, "ov-2")) == 1 and ledger_sums(engine, "ov-2")[key] == (1_000_020, 30), "billed once"
    assert _json(capsys, "quarantine", "list", "--json")["holds"] == []


def test_a_failure_after_fetch_is_recorded_against_its_source(billing_env, upstream, recent_hour):
    """The database refuses the bucket write (a trigger, as a full disk or a constraint would):
    the run fails naming the source and step, `last_error` says so, and a later run recovers."""
    start = recent_hour
    script = Script(source_id="ov-3", node_id="node-ov-3", items=_items(start, {"u-1": [(1, 2), (3, 4), (5, 6)]}))
    source = serve(billing_env, upstream, script, start - MINUTE)
    engine = billing_env.engine
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as connection:
        if postgres:
            connection.execute(text(
                "CREATE FUNCTION refuse_buckets() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'bucket storage refused'; END $$ LANGUAGE plpgsql"
            ))
            connection.execute(text("CREATE TRIGGER refuse BEFORE INSERT ON usage_minute_buckets FOR EACH ROW EXECUTE FUNCTION refuse_buckets()"))
        else:
            connection.execute(text(
                "CREATE TRIGGER refuse BEFORE INSERT ON usage_minute_buckets BEGIN SELECT RAISE(ABORT, 'bucket storage refused'); END"
            ))
    failed = materialize_range(defs, billing_env.instance(), source.source_id, start, start + MINUTE, raise_on_error=False)
    assert not failed.success
    error = checkpoint(engine, "ov-3")["last_error"]
    assert error.startswith("source 'ov-3': usage_minute_buckets failed for [") and "bucket storage refused" in error
    assert "INSERT" not in error, "the statement and its parameters stay out of the recorded error"

    with engine.begin() as connection:
        connection.execute(text("DROP TRIGGER refuse ON usage_minute_buckets" if postgres else "DROP TRIGGER refuse"))
    assert materialize_range(defs, billing_env.instance(), source.source_id, start, start + MINUTE).success
    assert checkpoint(engine, "ov-3")["last_error"] is None
    assert buckets_by_key(engine, "ov-3")[("node-ov-3", "test", "u-1", "vless-in", start)] == (5, 6)


def test_a_dripping_exporter_does_not_lock_other_sources_out_of_sqlite(billing_env, recent_hour, sqlite_only):
    """The fetch used to hold SQLite's write lock while the exporter dripped: a healthy source then
    failed with `database is locked` after 64 s. Now the healthy fetch completes while the drip goes on."""
    start = recent_hour
    slow = HostileExporter(billing_env.root, "drip-1", fault=Drip(every_s=0.004, max_s=60)).start()
    fast = HostileExporter(billing_env.root, "fast-1").start()
    try:
        billing_env.fleet.monkeypatch.setenv(slow.token_variable, slow.token)
        billing_env.fleet.monkeypatch.setenv(fast.token_variable, fast.token)
        billing_env.write_registry([
            slow.registry_entry(start - MINUTE, request_timeout="30s"), fast.registry_entry(start - MINUTE),
        ])
        registry = load_registry(billing_env.sources_file)
        engine = billing_env.engine
        outcome: dict = {}

        def drip_fetch():
            try:
                outcome["drip"] = fetch_slice(engine, registry.get("drip-1"), Slice("drip-1", start, start + MINUTE), retry=RetryPolicy(attempts=1))
            except Exception as error:  # noqa: BLE001 - recorded for the assertion below
                outcome["drip"] = error

        dripping = threading.Thread(target=drip_fetch, daemon=True)
        dripping.start()
        wait_until(lambda: slow.heard, "the dripping exporter to be asked", 10)
        stats = fetch_slice(engine, registry.get("fast-1"), Slice("fast-1", start, start + MINUTE), retry=RetryPolicy(attempts=1))
        assert stats.samples > 0
        assert dripping.is_alive(), "the healthy source finished while the slow one was still dripping"
        assert checkpoint(engine, "fast-1")["last_error"] is None
        dripping.join(timeout=90)
        assert not isinstance(outcome.get("drip"), Exception), outcome
    finally:
        slow.stop()
        fast.stop()


@pytest.fixture
def sqlite_only(billing_env):
    if billing_env.engine.dialect.name != "sqlite":
        pytest.skip("the write lock that blocked other sources is SQLite's (PostgreSQL locks rows)")
