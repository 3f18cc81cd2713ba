"""hourly_usage through real Dagster runs: the SQL derivation equals the pure
core over every ledger row, moves split an hour on the minute, unassigned
usage is kept apart, and completeness holds a lagging hour back until its
source catches up or an operator forces it (recorded with who and why)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from billing_assets.accounts.model import load_accounts
from billing_assets_tests.support.downstream import (
    HOUR, collect, expected_hourly, first_hour, remit, remittance_rows, stored_hourly, users_of, write_accounts,
)
from billing_assets.storage import downstream as store


@pytest.fixture
def two_sources(billing_env, tmp_path, monkeypatch):
    h0 = first_hour(4)
    a = billing_env.fleet.start("src-a", billing_start=h0, users=6, seed=1)
    b = billing_env.fleet.start("src-b", billing_start=h0, users=6, seed=2)
    billing_env.write_registry()
    billing_env.sync_partitions()
    ua, ub = users_of(a), users_of(b)
    accounts_file = write_accounts(
        tmp_path / "accounts.yaml",
        {"files": {"kind": "csv", "directory": str(tmp_path / "remit")}},
        [
            {"account_id": "acme", "subscription_key": "acme-sub", "targets": ["files"],
             "users": [{"uuid": ua[0]}, {"uuid": ua[1]}, {"uuid": ub[0]}]},
            # ua[2] moves from globex to acme at h0+30m.
            {"account_id": "globex", "subscription_key": "globex-sub", "targets": ["files"],
             "users": [{"uuid": ua[2]}, {"uuid": ub[1]}]},
            {"account_id": "acme2", "subscription_key": "acme2-sub", "targets": ["files"],
             "users": [{"uuid": ua[2], "since": (h0 + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")}]},
        ],
    )
    monkeypatch.setenv("BILLING_ACCOUNTS_FILE", str(accounts_file))
    monkeypatch.setenv("BILLING_REMIT_SETTLE", "10m")
    return h0, a, b, load_accounts(accounts_file)


def test_hourly_usage_equals_the_core_over_the_ledger_and_splits_moves(billing_env, two_sources):
    h0, a, b, accounts = two_sources
    collect(billing_env, ["src-a", "src-b"], h0, h0 + 2 * HOUR + timedelta(minutes=15))
    result = remit(billing_env, h0, h0 + HOUR)
    assert result.success
    engine = billing_env.engine
    assigned, unassigned = stored_hourly(engine)
    want_assigned, want_unassigned = expected_hourly(engine, accounts.memberships, [h0, h0 + HOUR])
    assert {k: v for k, v in assigned.items() if v} == {k: v for k, v in want_assigned.items() if v}
    assert {k: v for k, v in unassigned.items() if v} == {k: v for k, v in want_unassigned.items() if v}
    # The move is real in the data: both sides of it got part of h0.
    assert assigned[("globex", "downlink_bytes", h0)] > 0 and assigned[("acme2", "downlink_bytes", h0)] > 0
    assert sum(unassigned.values()) > 0, "users outside every account are kept, not dropped"
    # Both hours complete: planned, and the CSV target took everything assigned.
    rows = remittance_rows(engine)
    assert rows and all(r["status"] == "sent" for r in rows)
    sent = {}
    for r in rows:
        sent[(r["account_id"], r["metric"], r["hour"])] = sent.get((r["account_id"], r["metric"], r["hour"]), 0) + r["quantity"]
    assert sent == {k: v for k, v in assigned.items() if v}


def test_a_lagging_source_holds_the_hour_back_until_it_catches_up_or_is_forced(billing_env, two_sources):
    h0, *_ = two_sources
    collect(billing_env, ["src-a"], h0, h0 + 2 * HOUR + timedelta(minutes=15))
    collect(billing_env, ["src-b"], h0, h0 + HOUR + timedelta(minutes=5))  # h0 settled for b, h0+1h not even collected
    assert remit(billing_env, h0, h0 + HOUR).success
    engine = billing_env.engine
    with engine.connect() as connection:
        verdicts = store.read_completeness(connection, [h0, h0 + HOUR])
    assert verdicts[h0]["complete"] is False, "b collected h0 only 5 minutes past its end, settle is 10m"
    assert "needs" in json.loads(verdicts[h0]["detail"])["sources"]["src-b"]
    assert json.loads(verdicts[h0]["detail"])["sources"]["src-a"] == "ok"
    assert remittance_rows(engine) == []

    # Forcing without a reason is refused and forces nothing.
    refused = remit(billing_env, h0, h0, tags={"billing/force_complete": "true"})
    assert not refused.success
    assert remittance_rows(engine) == []

    forced = remit(billing_env, h0, h0, tags={"billing/force_complete": "true", "billing/reason": "src-b decommissioned",
                                              "dagster/user": "ops@example.test"})
    assert forced.success
    with engine.connect() as connection:
        row = store.read_completeness(connection, [h0])[h0]
    assert (row["forced"], row["forced_by"], row["reason"]) == (True, "ops@example.test", "src-b decommissioned")
    assert {r["hour"] for r in remittance_rows(engine)} == {h0}

    # The lagging source catches up: the next hour becomes complete by itself.
    collect(billing_env, ["src-b"], h0 + HOUR, h0 + 2 * HOUR + timedelta(minutes=15))
    assert remit(billing_env, h0 + HOUR, h0 + HOUR).success
    with engine.connect() as connection:
        row = store.read_completeness(connection, [h0 + HOUR])[h0 + HOUR]
    assert row["complete"] and not row["forced"]
    assert {r["hour"] for r in remittance_rows(engine)} == {h0, h0 + HOUR}
