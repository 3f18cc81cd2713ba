"""The remittance sensor, evaluated like the daemon does and its requests run:
ready hours go out as one run per contiguous range, a ledger change after
remittance (what a reconcile backfill writes) comes back as a revision, and
a due retry is requested without anyone asking."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from billing_assets.defs.downstream.launch import DOWNSTREAM_ASSETS
from billing_assets.defs.downstream.sensor import contiguous, remittance_sensor
from billing_assets.defs.resources import BillingStore
from billing_assets.definitions import defs
from billing_assets.receiver import ReceiverFaults
from billing_assets_tests.support.downstream import (  # noqa: F401 - fixture
    HOUR, U, ledger_by_subscription, remit_world as world, remittance_rows, write_ledger,
)


class Daemon:
    def __init__(self, instance):
        self.instance, self.cursor = instance, None
        self.job = defs.resolve_implicit_global_asset_job_def()

    def evaluate(self) -> list[dg.RunRequest]:
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, resources={"billing": BillingStore()}, definitions=defs)
        result = remittance_sensor(context)
        self.cursor = result.cursor
        return list(result.run_requests or [])

    def run(self, request: dg.RunRequest) -> bool:
        return self.job.execute_in_process(
            asset_selection=[dg.AssetKey(a) for a in DOWNSTREAM_ASSETS], instance=self.instance, tags=request.tags,
            raise_on_error=False, run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
        ).success


def test_contiguous_hours_make_one_range_each():
    h = [HOUR * i for i in (0, 1, 2, 5, 7, 8)]
    assert contiguous(h) == [(h[0], h[2]), (h[3], h[3]), (h[4], h[5])]


def test_ready_hours_then_late_ledger_then_due_retry(billing_env, world):
    h0, receiver, admin, clock, entries = world
    daemon = Daemon(billing_env.instance())
    requests = daemon.evaluate()
    keys = [(r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"]) for r in requests]
    # Every ended hour of the 6h lookback is complete (the only source is disabled): one range, not one run per hour.
    assert keys == [((h0 - 3 * HOUR).strftime("%Y-%m-%d-%H:%M"), (h0 + 3 * HOUR - HOUR).strftime("%Y-%m-%d-%H:%M"))]
    assert daemon.run(requests[0])
    assert daemon.evaluate() == [], "nothing left to do"

    # Late data for h0+1h after it was remitted (a reconcile appends corrections like this).
    clock.advance(minutes=1)
    write_ledger(billing_env.engine, [(U[1], h0 + HOUR + timedelta(minutes=3), 500, 50)])
    requests = daemon.evaluate()
    assert [(r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"]) for r in requests] == [
        ((h0 + HOUR).strftime("%Y-%m-%d-%H:%M"),) * 2
    ]
    assert "ledger changed" in requests[0].tags["billing/trigger"]
    receiver.faults = ReceiverFaults(fail_5xx=True)
    assert daemon.run(requests[0])
    revisions = [r for r in remittance_rows(billing_env.engine) if r["revision"] == 1]
    assert len(revisions) == 2 and "retryable" in {r["status"] for r in revisions}
    assert daemon.evaluate() == [], "the retry is not due yet"

    receiver.faults = ReceiverFaults()
    clock.advance(minutes=5)
    requests = daemon.evaluate()
    assert len(requests) == 1 and "retry due" in requests[0].tags["billing/trigger"]
    assert daemon.run(requests[0])
    assert all(r["status"] == "sent" for r in remittance_rows(billing_env.engine))
    totals = {(t["subscription"], t["unitType"]): t["amount"] for t in admin.accepted()["totals"]}
    assert totals == ledger_by_subscription(entries + [(U[1], h0 + HOUR, 500, 50)])
    assert daemon.evaluate() == []


def test_a_user_assigned_later_with_a_covering_since_gets_the_unassigned_usage_remitted(billing_env, world, monkeypatch):
    import os

    import yaml

    h0, receiver, admin, clock, entries = world
    stranger = "44444444-4444-4444-8444-000000000000"
    write_ledger(billing_env.engine, [(stranger, h0 + timedelta(minutes=20), 900, 90)])
    daemon = Daemon(billing_env.instance())
    for request in daemon.evaluate():
        assert daemon.run(request)
    assert daemon.evaluate() == []
    before = {(t["subscription"], t["unitType"]): t["amount"] for t in admin.accepted()["totals"]}
    assert before == ledger_by_subscription(entries), "the stranger's usage is not remitted while unassigned"

    path = os.environ["BILLING_ACCOUNTS_FILE"]
    data = yaml.safe_load(open(path))
    data["accounts"][1]["users"].append({"uuid": stranger, "since": (h0 - HOUR).strftime("%Y-%m-%dT%H:%M:%SZ")})
    with open(path, "w") as handle:
        yaml.safe_dump(data, handle)
    requests = daemon.evaluate()
    assert requests and all("accounts changed" in r.tags["billing/trigger"] for r in requests)
    for request in requests:
        assert daemon.run(request)
    after = {(t["subscription"], t["unitType"]): t["amount"] for t in admin.accepted()["totals"]}
    assert after[("globex-sub", "uplink_bytes")] == before[("globex-sub", "uplink_bytes")] + 900
    assert after[("globex-sub", "downlink_bytes")] == before[("globex-sub", "downlink_bytes")] + 90
    assert {k: v for k, v in after.items() if k[0] != "globex-sub"} == {k: v for k, v in before.items() if k[0] != "globex-sub"}
    assert daemon.evaluate() == []
