"""End to end through real Dagster runs: three HTTPS exporters, five accounts
(one user moving mid-hour, one user in no account), three hours, late data
arriving after the first remittance, and three targets (Kill Bill with
revisions, a one-record-per-hour marketplace, CSV files). Everything after
the collection runs is driven by `remittance_sensor`.

After quiescence the receivers' own query endpoints and the CSV files must
equal the ledger exactly, per account and metric.
"""

from __future__ import annotations

import csv
import hashlib
import secrets
from collections import defaultdict
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from billing_assets.accounts.model import load_accounts
from billing_assets.exporter import Faults, ServerTls, generate_tls_material
from billing_assets.receiver import ReceiverServer
from billing_assets.receiver.admin import ReceiverAdmin
from billing_assets.storage.schema import remittance_files
from billing_assets_tests.support.downstream import (
    HOUR, collect, expected_hourly, first_hour, per_account_metric, remittance_rows, stored_hourly, users_of, write_accounts,
)
from billing_assets_tests.test_remittance_sensor import Daemon

FMT = "%Y-%m-%dT%H:%M:%SZ"


def drain(daemon: Daemon, limit: int = 5) -> int:
    runs = 0
    for _ in range(limit):
        requests = daemon.evaluate()
        if not requests:
            return runs
        for request in requests:
            assert daemon.run(request), request.tags
            runs += 1
    raise AssertionError("the sensor kept requesting runs")


def receiver_totals(admin: ReceiverAdmin) -> dict[tuple[str, str], int]:
    return {(t["subscription"], t["unitType"]): t["amount"] for t in admin.accepted(totals_only=True)["totals"]}


def test_three_sources_five_accounts_three_hours_late_data_equal_the_ledger(billing_env, tmp_path, monkeypatch):
    h0 = first_hour(4)
    now = datetime.now(timezone.utc)
    # s3 serves nothing collected in the last `late` seconds: the last 20 minutes of h1 arrive only later.
    late = int((now - (h0 + 2 * HOUR - timedelta(minutes=20))).total_seconds())
    s1 = billing_env.fleet.start("s1", billing_start=h0, users=4, seed=11)
    s2 = billing_env.fleet.start("s2", billing_start=h0, users=4, seed=12)
    s3 = billing_env.fleet.start("s3", billing_start=h0, users=4, seed=13, faults=Faults(late_seconds=late))
    billing_env.write_registry()
    billing_env.sync_partitions()
    u1, u2, u3 = users_of(s1), users_of(s2), users_of(s3)

    tls = generate_tls_material(tmp_path / "rtls", server_names=("kb.test",))
    receivers, admins = {}, {}
    for name in ("kb", "market"):
        token = secrets.token_urlsafe(16)
        monkeypatch.setenv(f"E2E_{name.upper()}_TOKEN", token)
        receivers[name] = ReceiverServer(ServerTls(tls.server_cert, tls.server_key), auth="bearer", credential=token).start()
        admins[name] = ReceiverAdmin(receivers[name].url, tls.ca_cert, "kb.test", "bearer", token)
    kb = lambda name, **extra: {  # noqa: E731
        "kind": "killbill", "base_url": receivers[name].url, "auth_mode": "bearer", "credential_ref": f"env:E2E_{name.upper()}_TOKEN",
        "ca_bundle_ref": f"file:{tls.ca_cert}", "server_name": "kb.test", "request_timeout": "5s", **extra,
    }
    csv_dir = tmp_path / "csv"
    move = (h0 + HOUR + timedelta(minutes=30)).strftime(FMT)
    path = write_accounts(
        tmp_path / "accounts.yaml",
        {"kb": kb("kb"), "market": kb("market", one_record_per_hour=True), "files": {"kind": "csv", "directory": str(csv_dir)}},
        [
            {"account_id": "a1", "subscription_key": "sub-a1", "targets": ["kb", "files"],
             "users": [{"uuid": u1[0]}, {"uuid": u2[3]}, {"uuid": u3[0]}]},
            {"account_id": "a2", "subscription_key": "sub-a2", "targets": ["kb", "market"], "users": [{"uuid": u1[1]}, {"uuid": u3[1]}]},
            # u1[2] moves from a3 to a4 at h1+30m.
            {"account_id": "a3", "subscription_key": "sub-a3", "targets": ["market", "files"], "users": [{"uuid": u1[2]}, {"uuid": u2[1]}]},
            {"account_id": "a4", "subscription_key": "sub-a4", "targets": ["kb", "market", "files"],
             "users": [{"uuid": u1[2], "since": move}, {"uuid": u2[2]}, {"uuid": u3[2]}]},
            {"account_id": "a5", "subscription_key": "sub-a5", "targets": ["kb"], "users": [{"uuid": u1[3]}, {"uuid": u3[3]}]},
            # u2[0] is in no account (seed 12's user 3 joins late in the day, user 0 is active).
        ],
    )
    monkeypatch.setenv("BILLING_ACCOUNTS_FILE", str(path))
    monkeypatch.setenv("BILLING_REMIT_SETTLE", "10m")
    monkeypatch.setenv("BILLING_REMIT_LOOKBACK", "8h")  # wide: the test may cross an hour boundary
    accounts = load_accounts(path)
    engine = billing_env.engine
    daemon = Daemon(billing_env.instance())
    try:
        collect(billing_env, ["s1", "s2"], h0, h0 + 3 * HOUR + timedelta(minutes=15))
        collect(billing_env, ["s3"], h0, h0 + 2 * HOUR + timedelta(minutes=15))
        assert drain(daemon) == 1, "h0 and h1 are complete (h2 waits for s3): one run for both"
        first = remittance_rows(engine)
        assert {r["hour"] for r in first} == {h0, h0 + HOUR} and all(r["status"] == "sent" for r in first)

        # The late 20 minutes of s3 arrive (a re-collection overlapping h1), and s3 catches up on h2.
        s3.server.faults = Faults()
        collect(billing_env, ["s3"], h0 + HOUR, h0 + 3 * HOUR + timedelta(minutes=15))
        assert drain(daemon) == 1, "h1 (ledger changed) and h2 (complete) form one range"

        rows = remittance_rows(engine)
        hours = [h0, h0 + HOUR, h0 + 2 * HOUR]
        assert all(r["status"] == "sent" for r in rows)
        assert any(r["revision"] == 1 and r["target"] == "kb" and r["hour"] == h0 + HOUR for r in rows), "late data is a kb revision"
        assert not any(r["revision"] for r in rows if r["target"] == "market"), "the marketplace gets one record per hour"

        # The SQL derivation equals the pure core over every ledger row.
        assigned, unassigned = stored_hourly(engine)
        want_assigned, want_unassigned = expected_hourly(engine, accounts.memberships, hours)
        assert {k: v for k, v in assigned.items() if v} == {k: v for k, v in want_assigned.items() if v}
        assert {k: v for k, v in unassigned.items() if v} == {k: v for k, v in want_unassigned.items() if v}
        assert {k[0] for k, v in unassigned.items() if v} == {u2[0]}, "the unassigned user's usage is kept apart"
        assert assigned[("a3", "uplink_bytes", h0 + HOUR)] > 0 and assigned[("a4", "uplink_bytes", h0 + HOUR)] > 0

        ledger = per_account_metric({k: v for k, v in want_assigned.items() if v})
        for target in ("kb", "market"):
            subscribed = {a.account_id for a in accounts.accounts_of(target)}
            want = {(accounts.accounts[a].subscription_key, m): q for (a, m), q in ledger.items() if a in subscribed}
            assert receiver_totals(admins[target]) == want, f"{target} received exactly the ledger"
            accepted = admins[target].accepted()
            assert all(count == 1 for count in accepted["requests_by_tracking_id"].values()), "each record sent once"

        lines, files = defaultdict(int), sorted(csv_dir.glob("*.csv"))
        for file in files:
            with file.open() as handle:
                for line in csv.DictReader(handle):
                    lines[(line["account_id"], line["metric"])] += int(line["quantity"])
        subscribed = {a.account_id for a in accounts.accounts_of("files")}
        assert dict(lines) == {k: v for k, v in ledger.items() if k[0] in subscribed}, "CSV lines sum to the ledger"
        with engine.connect() as connection:
            manifest = connection.execute(select(remittance_files)).mappings().all()
        assert len(manifest) == sum(1 for r in rows if r["target"] == "files") and {m["status"] for m in manifest} == {"written"}
        for entry in manifest:
            content = (csv_dir / entry["file_name"]).read_bytes()
            assert hashlib.sha256(content).hexdigest() == entry["sha256"]
            tracking = next(r["tracking_id"] for r in rows if r["id"] == entry["remittance_id"])
            assert tracking in content.decode().splitlines()[entry["line"] - 1], "the manifest's line holds that record"
        assert drain(daemon) == 0
    finally:
        for receiver in receivers.values():
            receiver.stop()
