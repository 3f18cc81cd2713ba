"""Remittance to a real HTTPS reference receiver through real Dagster runs:
outages, ambiguous failures, refusals and racing runs never lose a record
and never make the receiver count one twice.

The receiver's own query endpoint is the judge of what it accepted.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from billing_assets.receiver import ReceiverFaults
from billing_assets_tests.support.downstream import HOUR, remit, remittance_rows, write_ledger

from billing_assets_tests.support.downstream import SUBS, U, ledger_by_subscription, remit_world as world  # noqa: F401 - fixture


def test_receiver_down_for_two_hours_then_every_hour_arrives_once_in_order(billing_env, world):
    h0, receiver, admin, clock, entries = world
    receiver.faults = ReceiverFaults(down=True)
    for hour in (h0, h0 + HOUR):  # two hourly runs during the outage
        assert remit(billing_env, hour, hour).success, "a target outage is not a failed run"
        clock.advance(hours=1)
    rows = remittance_rows(billing_env.engine)
    assert {r["status"] for r in rows} <= {"pending", "retryable"} and any(r["status"] == "retryable" for r in rows)
    assert admin.accepted()["accepted"] == 0
    receiver.faults = ReceiverFaults()
    assert remit(billing_env, h0 + 2 * HOUR, h0 + 2 * HOUR).success  # the next hour's run drains the backlog
    rows = remittance_rows(billing_env.engine)
    assert rows and all(r["status"] == "sent" for r in rows)
    accepted = admin.accepted()
    assert accepted["totals"] and {(t["subscription"], t["unitType"]): t["amount"] for t in accepted["totals"]} == ledger_by_subscription(entries)
    requests = accepted["requests_by_tracking_id"]
    tracking = [r["tracking_id"] for r in rows]
    assert len(set(tracking)) == len(rows) == accepted["accepted"]
    assert all(requests[t] >= 1 for t in tracking)
    dates = [record["recordDate"] for record in accepted["records"]]
    assert dates == sorted(dates), "hours reach the target in hour order"


def test_accept_then_drop_is_resent_with_the_same_tracking_id_and_counted_once(billing_env, world):
    h0, receiver, admin, clock, entries = world
    receiver.faults = ReceiverFaults(accept_then_drop=True)
    assert remit(billing_env, h0, h0).success
    first = remittance_rows(billing_env.engine)
    assert first and all(r["status"] == "retryable" for r in first[:1])
    receiver.faults = ReceiverFaults()
    clock.advance(minutes=5)
    assert remit(billing_env, h0, h0).success
    rows = remittance_rows(billing_env.engine)
    assert all(r["status"] == "sent" for r in rows)
    assert [r["tracking_id"] for r in rows] == [r["tracking_id"] for r in first]
    dropped = rows[0]["tracking_id"]
    accepted = admin.accepted()
    assert accepted["requests_by_tracking_id"][dropped] == 2, "sent twice, same id"
    h0_ledger = ledger_by_subscription([e for e in entries if e[1] < h0 + HOUR])
    assert {(t["subscription"], t["unitType"]): t["amount"] for t in accepted["totals"]} == h0_ledger, "not doubled"
    with billing_env.engine.connect() as connection:
        attempts = connection.exec_driver_sql(
            f"SELECT outcome FROM remittance_attempts WHERE remittance_id = {rows[0]['id']} ORDER BY id"
        ).scalars().all()
    assert attempts == ["retryable", "accepted"]


def test_a_refused_subscription_goes_to_the_dead_letter_alone_and_retry_sends_it_once(billing_env, world):
    from billing_assets.cli.main import main

    h0, receiver, admin, clock, entries = world
    receiver.faults = ReceiverFaults(refuse_subscriptions=frozenset({SUBS["globex"]}))
    assert remit(billing_env, h0, h0 + HOUR).success
    rows = remittance_rows(billing_env.engine)
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed and {r["account_id"] for r in failed} == {"globex"}
    assert all("does not exist" in r["last_error"] for r in failed), "the target's answer is kept"
    assert all(r["status"] == "sent" for r in rows if r["account_id"] != "globex")
    clock.advance(hours=3)
    assert remit(billing_env, h0, h0).success
    assert all(r["status"] == "failed" for r in remittance_rows(billing_env.engine) if r["account_id"] == "globex"), \
        "a dead letter is never retried by itself"
    assert main(["remittance", "status"]) == 1, "status fails while there is a dead letter"

    receiver.faults = ReceiverFaults()  # the subscription now exists
    since, until = h0.strftime("%Y-%m-%dT%H:%M:%SZ"), (h0 + 2 * HOUR).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert main(["remittance", "retry", "--dead-letter", "--account", "globex", "--since", since, "--until", until]) == 0
    rows = remittance_rows(billing_env.engine)
    assert all(r["status"] == "sent" for r in rows)
    accepted = admin.accepted()
    assert all(accepted["requests_by_tracking_id"][r["tracking_id"]] == 2 for r in rows if r["account_id"] == "globex")
    assert {(t["subscription"], t["unitType"]): t["amount"] for t in accepted["totals"]} == \
        ledger_by_subscription([e for e in entries if e[1] < h0 + 2 * HOUR])
    assert main(["remittance", "status"]) == 0


@pytest.mark.postgres
def test_two_racing_remittances_of_one_hour_never_send_a_revision_twice(billing_env, world):
    """Two runs plan and deliver the same hours at the same moment, in small claims.

    Planning serialises per target (advisory lock) and the UNIQUE keys refuse a
    second copy; claims are leases taken with SKIP LOCKED, so the two runs
    interleave on disjoint rows and no record reaches the target twice.
    """
    if not billing_env.database_url.startswith("postgresql"):
        pytest.skip("the race that matters is PostgreSQL's; SQLite writers are serial")
    from billing_assets.defs.resources import BillingStore
    from billing_assets.pipeline.hourly import derive_hours
    from billing_assets.pipeline.remittance import DeliverySettings, deliver, plan_hours

    h0, receiver, admin, clock, entries = world
    receiver.faults = ReceiverFaults(delay_s=0.05)  # keep both runs in flight together
    billing = BillingStore()
    engine, accounts = billing.engine(), billing.accounts()
    hours = [h0, h0 + HOUR, h0 + 2 * HOUR]
    derive_hours(engine, accounts, billing.registry(), hours, clock(), billing.settle())
    start, errors, sent_by = threading.Barrier(2), [], {}

    def worker(name):
        try:
            start.wait()
            plan_hours(engine, accounts, hours, clock())
            sent_by[name] = deliver(engine, accounts, f"run-{name}", clock, DeliverySettings(chunk=2)).accepted
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    rows = remittance_rows(billing_env.engine)
    assert len(rows) == 18 and all(r["revision"] == 0 for r in rows), "each (account, metric, hour) planned once"
    assert all(r["status"] == "sent" for r in rows)
    assert sum(sent_by.values()) == 18 and min(sent_by.values()) > 0, f"both runs delivered a share: {sent_by}"
    accepted = admin.accepted()
    assert all(accepted["requests_by_tracking_id"][r["tracking_id"]] == 1 for r in rows), "no record sent twice"
    assert {(t["subscription"], t["unitType"]): t["amount"] for t in accepted["totals"]} == ledger_by_subscription(entries)


def test_a_run_killed_between_send_and_commit_is_finished_by_the_next_without_double_counting(billing_env, world):
    """SIGKILL while records are in flight: the target has some, our rows do not say so.

    The rows stay leased to the dead run; once the lease ends the next run
    sends them again with the same tracking ids and the target counts each once.
    """
    import os
    import signal
    import subprocess
    import sys
    import time
    from datetime import datetime, timezone

    h0, receiver, admin, clock, entries = world
    receiver.faults = ReceiverFaults(delay_s=0.3)
    script = (
        "import dagster as dg\n"
        "from datetime import datetime\n"
        "from billing_assets.definitions import defs\n"
        "from billing_assets.defs.downstream.launch import materialize_hours\n"
        f"first, last = datetime.fromisoformat({h0.isoformat()!r}), datetime.fromisoformat({(h0 + 2 * HOUR).isoformat()!r})\n"
        "materialize_hours(defs, dg.DagsterInstance.get(), first, last)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while admin.accepted(totals_only=True)["accepted"] < 3:
            assert child.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run never started sending"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    rows = remittance_rows(billing_env.engine)
    taken = admin.accepted()["accepted"]
    assert rows and taken >= 3 and not any(r["status"] == "sent" for r in rows), "killed before any outcome was committed"
    assert any(r["claimed_by"] for r in rows), "the dead run's lease is still on its rows"

    receiver.faults = ReceiverFaults()
    clock.now = datetime.now(timezone.utc) + timedelta(minutes=11)  # past the dead run's lease
    assert remit(billing_env, h0, h0 + 2 * HOUR).success
    rows = remittance_rows(billing_env.engine)
    assert all(r["status"] == "sent" for r in rows)
    accepted = admin.accepted()
    assert accepted["accepted"] == len(rows)
    assert max(accepted["requests_by_tracking_id"].values()) == 2, "the in-flight ones were sent again, same id"
    assert {(t["subscription"], t["unitType"]): t["amount"] for t in accepted["totals"]} == ledger_by_subscription(entries)


def test_a_negative_correction_is_carried_as_credit_and_netted_never_sent_negative(billing_env, world):
    h0, receiver, admin, clock, entries = world
    assert remit(billing_env, h0, h0).success
    # The ledger takes 900 bytes of uplink back from acme's h0 (a correction entry).
    write_ledger(billing_env.engine, [(U[0], h0 + timedelta(minutes=0), -900, 0)])
    assert remit(billing_env, h0, h0 + HOUR).success
    rows = remittance_rows(billing_env.engine)
    assert all(r["quantity"] > 0 for r in rows), "no negative or empty usage leaves the system"
    acme_up = [r for r in rows if r["account_id"] == "acme" and r["metric"] == "uplink_bytes"]
    h1_acme = sum(e[2] for e in entries if e[1] >= h0 + HOUR and e[1] < h0 + 2 * HOUR and e[0] in U[:2])
    assert [(r["hour"], r["revision"], r["quantity"]) for r in acme_up] == [
        (h0, 0, sum(e[2] for e in entries if e[1] < h0 + HOUR and e[0] in U[:2])),
        (h0 + HOUR, 0, h1_acme - 900),
    ], "the credit is netted against the next hour"
    with billing_env.engine.connect() as connection:
        carried = connection.exec_driver_sql("SELECT carried FROM remittance_carry WHERE account_id = 'acme' AND metric = 'uplink_bytes'").scalar_one()
    assert carried == 0
    totals = {(t["subscription"], t["unitType"]): t["amount"] for t in admin.accepted()["totals"]}
    want = ledger_by_subscription([e for e in entries if e[1] < h0 + 2 * HOUR] + [(U[0], h0, -900, 0)])
    assert totals == want


def test_a_broken_accounts_file_fails_the_run_by_name_and_changes_nothing(billing_env, world, tmp_path, monkeypatch):
    from billing_assets_tests.support.outcomes import failure_text

    h0, receiver, admin, clock, entries = world
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "targets: {}\naccounts:\n  - {account_id: acme, subscription_key: s, targets: [kb], users: [{uuid: not-a-uuid}]}\n"
    )
    monkeypatch.setenv("BILLING_ACCOUNTS_FILE", str(broken))
    result = remit(billing_env, h0, h0)
    assert not result.success
    text = failure_text(result)
    assert "broken.yaml" in text and "account 'acme'" in text and "users.0.uuid" in text
    assert remittance_rows(billing_env.engine) == []
    with billing_env.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT COUNT(*) FROM hourly_usage").scalar_one() == 0
    assert admin.accepted()["accepted"] == 0


def test_dagster_asset_materialize_partition_range_remits_as_one_run_and_leaks_no_secret(billing_env, world, monkeypatch):
    """The CI / operator path of DESIGN.md, as a subprocess: one run for the range, no secret anywhere."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from billing_assets_tests.support.outcomes import everything_dagster_recorded

    h0, receiver, admin, clock, entries = world
    receiver.faults = ReceiverFaults(refuse_subscriptions=frozenset({"initech-sub"}))  # answers land in last_error
    bin_dir = Path(sys.executable).parent
    keys = f"{h0:%Y-%m-%d-%H:%M}...{h0 + 2 * HOUR:%Y-%m-%d-%H:%M}"
    done = subprocess.run(
        [str(bin_dir / "dagster"), "asset", "materialize", "-m", "billing_assets.definitions",
         "--select", "hourly_usage,remittance", "--partition-range", keys],
        capture_output=True, text=True, env=dict(os.environ), timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    instance = billing_env.instance()
    runs = instance.get_run_records()
    assert len(runs) == 1, "a range of hours is one run"
    rows = remittance_rows(billing_env.engine)
    assert {r["hour"] for r in rows} == {h0, h0 + HOUR, h0 + 2 * HOUR}
    assert {r["status"] for r in rows if r["account_id"] != "initech"} == {"sent"}
    assert {r["status"] for r in rows if r["account_id"] == "initech"} == {"failed"}
    token = os.environ["REMIT_TEST_KB_TOKEN"]
    recorded = everything_dagster_recorded(instance, runs[0].dagster_run.run_id) + done.stdout + done.stderr
    with billing_env.engine.connect() as connection:
        recorded += repr(connection.exec_driver_sql("SELECT detail FROM remittance_attempts").all())
        recorded += repr(connection.exec_driver_sql("SELECT last_error FROM remittances").all())
    assert "does not exist" in recorded and token not in recorded
