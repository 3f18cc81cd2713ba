"""Completeness through real Dagster runs: a lagging source holds its hour
back until it catches up, or an operator forces it (recorded with who and
why). The SQL derivation itself is compared with the pure core in
test_remittance_end_to_end."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from billing_assets.accounts.model import load_accounts
from billing_assets_tests.support.downstream import (
    HOUR, collect, first_hour, remit, remittance_rows, users_of, write_accounts,
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


def test_a_lagging_source_holds_the_hour_back_until_it_catches_up_or_is_forced(billing_env, two_sources):
    if not billing_env.database_url.startswith("sqlite"):
        # The verdict is Python over the same checkpoint and coverage reads; the end-to-end
        # test gates hours on PostgreSQL too. Four collection runs per database are the cost.
        pytest.skip("completeness semantics run once, on SQLite")
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
