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
