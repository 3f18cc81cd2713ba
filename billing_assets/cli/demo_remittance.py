"""The remittance half of `billing demo`: the demo's ledger leaves the system.

A reference receiver (Kill Bill shape, HTTPS, pinned CA, bearer token) and a
CSV directory are the targets; the first delivery meets an injected 503, the
rows wait as `retryable`, and `remittance_sensor` requests the retry once it
is due, exactly as in production. The open current hour can only go out
forced, so the demo forces it and shows who and why were recorded.
"""

from __future__ import annotations

import os
import secrets
import time
from datetime import datetime, timedelta
from pathlib import Path

import yaml

from billing_assets.core.hourly import floor_hour
from billing_assets.core.timeutil import format_rfc3339

HOUR = timedelta(hours=1)


def _accounts(root: Path, users: list[str], left_out: str | None, receiver_url: str, ca_cert: Path) -> Path:
    """Two paying accounts and one active user left out, so the demo shows unassigned usage too."""
    users = [u for u in users if u != left_out]
    half = len(users) // 2
    doc = {
        "targets": {
            "kb": {"kind": "killbill", "base_url": receiver_url, "auth_mode": "bearer", "credential_ref": "env:DEMO_KILLBILL_TOKEN",
                   "ca_bundle_ref": f"file:{ca_cert}", "server_name": "receiver.demo.test", "request_timeout": "5s"},
            "zuora": {"kind": "csv", "directory": str(root / "remit")},
        },
        "accounts": [
            {"account_id": "acme", "subscription_key": "acme-traffic", "targets": ["kb", "zuora"], "users": [{"uuid": u} for u in users[:half]]},
            {"account_id": "globex", "subscription_key": "globex-traffic", "targets": ["kb"], "users": [{"uuid": u} for u in users[half:]]},
        ],
    }
    path = root / "accounts.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def demo_users(sources: int, users: int) -> list[str]:
    from billing_assets.exporter import TrafficShape

    found = []
    for index in range(sources):
        shape = TrafficShape(seed=index + 1, users=users, node_id=f"node-{index + 1}", env="demo", source_id=f"demo-{index + 1}")
        found += [uuid for uuid, _ in shape.model.users]
    return found


def remit_demo(root: Path, sources: int, users: int, start: datetime, end: datetime) -> int:
    import dagster as dg

    from billing_assets.defs.downstream.launch import DOWNSTREAM_ASSETS, force_tags, materialize_hours
    from billing_assets.defs.downstream.sensor import remittance_sensor
    from billing_assets.defs.resources import BillingStore
    from billing_assets.definitions import defs
    from billing_assets.exporter import ServerTls, generate_tls_material
    from billing_assets.receiver import ReceiverFaults, ReceiverServer
    from billing_assets.receiver.admin import ReceiverAdmin
    from billing_assets.storage import downstream as store

    tls = generate_tls_material(root / "tls" / "receiver", server_names=("receiver.demo.test",))
    token = secrets.token_urlsafe(24)
    os.environ["DEMO_KILLBILL_TOKEN"] = token
    with ReceiverServer(ServerTls(tls.server_cert, tls.server_key), auth="bearer", credential=token) as receiver:
        admin = ReceiverAdmin(receiver.url, tls.ca_cert, "receiver.demo.test", "bearer", token)
        engine = BillingStore().engine()
        with engine.connect() as connection:
            left_out = connection.exec_driver_sql(
                "SELECT uuid FROM billing_ledger GROUP BY uuid HAVING SUM(uplink_bytes + downlink_bytes) > 0 ORDER BY uuid LIMIT 1"
            ).scalar()
        os.environ.update(
            BILLING_ACCOUNTS_FILE=str(_accounts(root, demo_users(sources, users), left_out, receiver.url, tls.ca_cert)),
            BILLING_REMIT_SETTLE="1m", BILLING_REMIT_BACKOFF="1s", BILLING_REMIT_LOOKBACK="3h",
        )
        first, last = floor_hour(start), floor_hour(end - timedelta(minutes=1))
        instance = dg.DagsterInstance.get()
        print()
        print(f"remittance: receiver {receiver.url} (as receiver.demo.test), CSV in {root / 'remit'}")
        print("  injected fault: the receiver answers 503 to the first delivery")
        receiver.faults = ReceiverFaults(fail_5xx=True)
        result = materialize_hours(defs, instance, first, last, tags=force_tags("demo: the current hour is still open", "billing-demo"))
        if not result.success:
            print("  remittance run FAILED")
            return 1
        rows = _rows(engine)
        print(f"  run {result.run_id[:8]}: {sum(1 for r in rows if r['status'] == 'retryable')} kb record(s) retryable, "
              f"{sum(1 for r in rows if r['status'] == 'pending')} pending behind them, "
              f"{sum(1 for r in rows if r['status'] == 'sent')} sent (CSV)")
        receiver.faults = ReceiverFaults()
        time.sleep(1.5)  # the retry's backoff
        context = dg.build_sensor_context(instance=instance, resources={"billing": BillingStore()}, definitions=defs)
        requests = list(remittance_sensor(context).run_requests or [])
        job = defs.resolve_implicit_global_asset_job_def()
        for request in requests:
            retry = job.execute_in_process(
                asset_selection=[dg.AssetKey(a) for a in DOWNSTREAM_ASSETS], instance=instance, tags=request.tags, raise_on_error=False,
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
            print(f"  remittance_sensor: {request.tags.get('billing/trigger')} -> run {retry.run_id[:8]}: {'ok' if retry.success else 'FAILED'}")
        rows = _rows(engine)
        with engine.connect() as connection:
            hours = store.hours_report(connection, first, last + HOUR)
        print()
        print(f"{'hour':<21} {'state':<34} {'records':>7} {'sent':>5} {'ledger bytes':>13} {'unassigned':>11}")
        for hour in hours:
            state = "complete" if hour["complete"] else (f"forced by {hour['forced_by']}" if hour["forced"] else "incomplete")
            mine = [r for r in rows if r["hour"] == hour["hour"]]
            print(f"{format_rfc3339(hour['hour']):<21} {state:<34} {len(mine):>7} {sum(1 for r in mine if r['status'] == 'sent'):>5} "
                  f"{hour['ledger']:>13} {hour['unassigned']:>11}")
        received = {(t["subscription"], t["unitType"]): t["amount"] for t in admin.accepted(totals_only=True)["totals"]}
        expected: dict = {}
        for r in rows:
            if r["target"] == "kb":
                expected[(r["subscription_key"], r["metric"])] = expected.get((r["subscription_key"], r["metric"]), 0) + r["quantity"]
        with engine.connect() as connection:
            derived = dict(connection.exec_driver_sql(
                "SELECT account_id || '-traffic' || '/' || metric, SUM(quantity) FROM hourly_usage GROUP BY account_id, metric"
            ).all())
        books_ok = all(received.get(k) == v for k, v in expected.items()) and sum(received.values()) == sum(derived.values())
        all_sent = all(r["status"] == "sent" for r in rows)
        print()
        print(f"receiver accepted {sum(received.values())} bytes over {len(received)} (subscription, metric) totals; "
              f"hourly usage {sum(derived.values())}: {'equal' if books_ok else 'DIFFERENT'}; "
              f"every record sent: {'yes' if all_sent else 'NO'}")
        return 0 if books_ok and all_sent else 1


def _rows(engine) -> list[dict]:
    from sqlalchemy import select

    from billing_assets.storage.schema import remittances

    with engine.connect() as connection:
        return [dict(r) for r in connection.execute(select(remittances).order_by(remittances.c.id)).mappings()]
