"""Building blocks of the downstream tests: a ledger from real exporters and
real runs, an accounts file, and the downstream run over a range of hours."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml
from sqlalchemy import select

from billing_assets.core.hourly import Memberships, floor_hour, hourly_sums
from billing_assets.defs.downstream.launch import materialize_hours
from billing_assets.definitions import defs
from billing_assets.storage.schema import hourly_usage, remittances, unassigned_usage
from billing_assets_tests.support.db import ledger_rows
from billing_assets_tests.support.outcomes import run_minutes

HOUR = timedelta(hours=1)


def first_hour(hours_back: int = 4) -> datetime:
    now = datetime.now(timezone.utc)
    return floor_hour(now) - hours_back * HOUR


def users_of(running) -> list[str]:
    return [uuid for uuid, _ in running.server.shape.model.users]


def collect(billing_env, source_ids, start: datetime, end: datetime) -> None:
    for source_id in source_ids:
        result = run_minutes(billing_env, source_id, start, end)
        assert result.success, f"collection run of {source_id} failed"


def write_accounts(path: Path, targets: dict, accounts: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"targets": targets, "accounts": accounts}, sort_keys=False))
    return path


def remit(billing_env, first: datetime, last: datetime, tags: dict | None = None):
    return materialize_hours(defs, billing_env.instance(), first, last, tags=tags)


def expected_hourly(engine, memberships: Memberships, hours: list[datetime]):
    """The pure core over every ledger row: the oracle for the SQL derivation."""
    lines = [(r["uuid"], r["bucket_start"], r["uplink_bytes"], r["downlink_bytes"]) for r in ledger_rows(engine)]
    sums = hourly_sums(lines, memberships)
    keep = set(hours)
    assigned = {k: v for k, v in sums.assigned.items() if k[2] in keep}
    unassigned = {k: v for k, v in sums.unassigned.items() if k[2] in keep}
    return assigned, unassigned


def stored_hourly(engine) -> tuple[dict, dict]:
    with engine.connect() as connection:
        assigned = {(r.account_id, r.metric, r.hour): r.quantity for r in connection.execute(select(hourly_usage))}
        unassigned = {(r.uuid, r.metric, r.hour): r.quantity for r in connection.execute(select(unassigned_usage))}
    return assigned, unassigned


def remittance_rows(engine, target: str | None = None) -> list[dict]:
    query = select(remittances).order_by(remittances.c.id)
    if target:
        query = query.where(remittances.c.target == target)
    with engine.connect() as connection:
        return [dict(r) for r in connection.execute(query).mappings()]


def per_account_metric(values: dict) -> dict[tuple[str, str], int]:
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for (account, metric, _hour), quantity in values.items():
        totals[(account, metric)] += quantity
    return dict(totals)


# --- a ledger written directly, for the delivery tests --------------------------
# Delivery tests are about what leaves the system, not how the ledger was
# made (test_hourly_usage and the end-to-end test collect for real); writing
# entries straight into the append-only ledger keeps each of them to seconds.

def write_ledger(engine, entries: list[tuple[str, datetime, int, int]], source_id: str = "s-1", created_at: datetime | None = None) -> None:
    """Append (uuid, minute, uplink, downlink) as entries; repeats of a key become corrections.

    `created_at` defaults to the patched `defs.automation.clock.now`, the clock the
    downstream stage compares it with.
    """
    from decimal import Decimal

    from sqlalchemy import func

    from billing_assets.defs.automation import clock
    from billing_assets.storage.schema import billing_ledger

    now = created_at or clock.now()
    with engine.begin() as connection:
        for user, minute, up, down in entries:
            seq = connection.execute(
                select(func.count()).select_from(billing_ledger).where(
                    billing_ledger.c.uuid == user, billing_ledger.c.bucket_start == minute
                )
            ).scalar_one() + 1
            connection.execute(billing_ledger.insert(), [dict(
                node_id=f"node-{source_id}", env="test", uuid=user, inbound_tag="t", bucket_start=minute, entry_seq=seq,
                source_id=source_id, email="u@example.test", uplink_bytes=up, downlink_bytes=down, amount=Decimal(0),
                amount_nanos=0, currency="USD", plan="standard", entry_kind="charge" if seq == 1 else "correction",
                created_at=now, run_id=None,
            )])


def disabled_registry(path: Path, source_id: str = "s-1") -> Path:
    """A registry whose one source is disabled: it holds no hour back, so hours are complete."""
    path.write_text(yaml.safe_dump({"sources": [{
        "source_id": source_id, "node_id": f"node-{source_id}", "env": "test", "base_url": "https://127.0.0.1:1",
        "enabled": False, "auth_mode": "bearer", "credential_ref": "env:UNUSED_TOKEN", "ca_bundle_ref": "file:/nonexistent/ca.pem",
        "server_name": "unused.test", "billing_start": "2026-01-01T00:00:00Z",
    }]}))
    return path


class FakeClock:
    """`defs.automation.clock.now` for the remittance runs, so backoff can be waited out instantly."""

    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta) -> None:
        self.now += timedelta(**delta)


# --- a receiver, three accounts and three hours of ledger ------------------------

import secrets  # noqa: E402

import pytest  # noqa: E402

from billing_assets.exporter import ServerTls, generate_tls_material  # noqa: E402
from billing_assets.receiver import ReceiverServer  # noqa: E402
from billing_assets.receiver.admin import ReceiverAdmin  # noqa: E402

U = ["11111111-1111-4111-8111-%012d" % i for i in range(4)]
SUBS = {"acme": "acme-sub", "globex": "globex-sub", "initech": "initech-sub"}


@pytest.fixture
def remit_world(billing_env, tmp_path, monkeypatch):
    h0 = first_hour(5)
    tls = generate_tls_material(tmp_path / "rtls", server_names=("kb.test",))
    token = secrets.token_urlsafe(16)
    monkeypatch.setenv("REMIT_TEST_KB_TOKEN", token)
    receiver = ReceiverServer(ServerTls(tls.server_cert, tls.server_key), auth="bearer", credential=token).start()
    disabled_registry(billing_env.sources_file)
    accounts = write_accounts(
        tmp_path / "accounts.yaml",
        {"kb": {"kind": "killbill", "base_url": receiver.url, "auth_mode": "bearer", "credential_ref": "env:REMIT_TEST_KB_TOKEN",
                "ca_bundle_ref": f"file:{tls.ca_cert}", "server_name": "kb.test", "request_timeout": "2s", "max_in_flight": 4}},
        [
            {"account_id": "acme", "subscription_key": SUBS["acme"], "targets": ["kb"], "users": [{"uuid": U[0]}, {"uuid": U[1]}]},
            {"account_id": "globex", "subscription_key": SUBS["globex"], "targets": ["kb"], "users": [{"uuid": U[2]}]},
            {"account_id": "initech", "subscription_key": SUBS["initech"], "targets": ["kb"], "users": [{"uuid": U[3]}]},
        ],
    )
    monkeypatch.setenv("BILLING_ACCOUNTS_FILE", str(accounts))
    monkeypatch.setenv("BILLING_REMIT_LOOKBACK", "6h")
    clock = FakeClock(h0 + 3 * HOUR + timedelta(minutes=20))
    monkeypatch.setattr("billing_assets.defs.automation.clock.now", clock)
    entries = [(U[i], h0 + h * HOUR + timedelta(minutes=7 * i + h), 1000 * (i + 1) + h, 10 * (i + 1) + h) for h in range(3) for i in range(4)]
    write_ledger(billing_env.engine, entries)
    admin = ReceiverAdmin(receiver.url, tls.ca_cert, "kb.test", "bearer", token)
    yield h0, receiver, admin, clock, entries
    receiver.stop()


def ledger_by_subscription(entries) -> dict[tuple[str, str], int]:
    owner = {U[0]: "acme", U[1]: "acme", U[2]: "globex", U[3]: "initech"}
    totals = defaultdict(int)
    for user, _minute, up, down in entries:
        totals[(SUBS[owner[user]], "uplink_bytes")] += up
        totals[(SUBS[owner[user]], "downlink_bytes")] += down
    return dict(totals)


