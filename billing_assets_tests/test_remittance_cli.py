"""`billing remittance …` against a real database and receiver: status tells
sent / pending / dead letter / carried and remitted vs ledger; reset re-sends
with the same ids; recalculate shows the revisions before adding them; run
forces with a recorded reason; bad flags are named."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from billing_assets.cli.main import main
from billing_assets.storage import downstream as store
from billing_assets_tests.support.downstream import (  # noqa: F401 - fixture
    HOUR, U, ledger_by_subscription, remit_world as world, remittance_rows, write_ledger,
)

FMT = "%Y-%m-%dT%H:%M:%SZ"


def span(h0, hours: int = 3) -> list[str]:
    return ["--since", h0.strftime(FMT), "--until", (h0 + hours * HOUR).strftime(FMT)]


def test_status_json_then_reset_and_recalculate(billing_env, world, capsys):
    h0, receiver, admin, clock, entries = world
    # `run` takes hours inclusive: h0..h0+2h is all three.
    assert main(["remittance", "run", "--since", h0.strftime(FMT), "--until", (h0 + 2 * HOUR).strftime(FMT)]) == 0
    capsys.readouterr()
    assert main(["remittance", "status", "--json", *span(h0)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["problems"] == []
    kb = [row for row in report["books"] if row["target"] == "kb"]
    assert {row["account_id"] for row in kb} == {"acme", "globex", "initech"}
    assert all(row["books_balance"] and row["pending"] == 0 and row["sent"] == row["accounted"] for row in kb)
    assert [h["ledger"] == h["derived"] for h in report["hours"]] == [True, True, True]

    # Late data after remittance: status shows the hour as a mismatch until it is recalculated.
    clock.advance(minutes=1)
    write_ledger(billing_env.engine, [(U[2], h0 + timedelta(minutes=40), 77, 7)])
    assert main(["remittance", "status", *span(h0)]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    assert main(["remittance", "recalculate", "--dry-run", *span(h0, 1)]) == 0
    out = capsys.readouterr().out
    assert "kb globex uplink_bytes" in out and "rev 1: 77" in out and "rev 1: 7" in out and "dry run" in out
    assert not any(r["revision"] for r in remittance_rows(billing_env.engine)), "a dry run adds nothing"
    assert main(["remittance", "recalculate", *span(h0, 1)]) == 0
    revisions = [(r["metric"], r["quantity"], r["status"]) for r in remittance_rows(billing_env.engine) if r["revision"]]
    assert sorted(revisions) == [("downlink_bytes", 7, "sent"), ("uplink_bytes", 77, "sent")]
    capsys.readouterr()
    assert main(["remittance", "status", *span(h0)]) == 0

    before = admin.accepted()["requests_by_tracking_id"]
    assert main(["remittance", "reset", "--account", "acme", *span(h0, 1)]) == 0
    after = admin.accepted()
    acme = [r for r in remittance_rows(billing_env.engine) if r["account_id"] == "acme" and r["hour"] == h0]
    assert acme and all(after["requests_by_tracking_id"][r["tracking_id"]] == before[r["tracking_id"]] + 1 for r in acme)
    assert {(t["subscription"], t["unitType"]): t["amount"] for t in after["totals"]} == ledger_by_subscription(
        entries + [(U[2], h0, 77, 7)]
    ), "a reset re-sends with the same ids: the target does not count twice"


def test_run_force_records_the_operator_and_reason_and_flags_are_named(billing_env, world, capsys, monkeypatch):
    h0, *_ = world
    assert main(["remittance", "run", "--since", h0.strftime(FMT), "--until", h0.strftime(FMT), "--force"]) == 2
    assert "--force needs --reason" in capsys.readouterr().err
    assert main(["remittance", "run", "--since", "2026-11-22T10:30:00Z", "--until", h0.strftime(FMT)]) == 2
    assert "--since '2026-11-22T10:30:00Z': must be on the hour" in capsys.readouterr().err
    assert main(["remittance", "reset", "--since", "yesterday", "--until", h0.strftime(FMT)]) == 2
    assert "--since 'yesterday'" in capsys.readouterr().err
    assert main(["remittance", "status", "--since", h0.strftime(FMT), "--until", h0.strftime(FMT)]) == 2
    assert "--until must be after --since" in capsys.readouterr().err

    key = h0.strftime("%Y-%m-%d-%H:%M")
    assert main(["remittance", "run", "--since", key, "--until", key, "--force", "--reason", "exporter eu-3 retired",
                 "--operator", "alice", "--wait"]) == 0
    with billing_env.engine.connect() as connection:
        row = store.read_completeness(connection, [h0])[h0]
    # The only source is disabled, so the hour was complete anyway: a force is recorded only when it decides something.
    assert row["complete"] and not row["forced"]


@pytest.fixture
def lagging(world, billing_env, monkeypatch):
    """The registry's source enabled and never collected: every hour is incomplete."""
    import yaml

    data = yaml.safe_load(billing_env.sources_file.read_text())
    data["sources"][0]["enabled"] = True
    billing_env.sources_file.write_text(yaml.safe_dump(data))
    return world


def test_an_incomplete_hour_is_only_remitted_when_forced_and_the_force_is_recorded(billing_env, lagging, capsys):
    h0, receiver, admin, *_ = lagging
    key = h0.strftime("%Y-%m-%d-%H:%M")
    assert main(["remittance", "run", "--since", key, "--until", key]) == 0
    assert remittance_rows(billing_env.engine) == [] and admin.accepted()["accepted"] == 0
    assert main(["remittance", "run", "--since", key, "--until", key, "--force", "--reason", "s-1 is being rebuilt", "--operator", "alice"]) == 0
    with billing_env.engine.connect() as connection:
        row = store.read_completeness(connection, [h0])[h0]
    assert (row["complete"], row["forced"], row["forced_by"], row["reason"]) == (False, True, "alice", "s-1 is being rebuilt")
    assert {r["hour"] for r in remittance_rows(billing_env.engine)} == {h0}
    assert all(r["status"] == "sent" for r in remittance_rows(billing_env.engine))
    capsys.readouterr()
    main(["remittance", "status", "--since", h0.strftime(FMT), "--until", (h0 + HOUR).strftime(FMT)])
    assert "forced by alice" in capsys.readouterr().out
