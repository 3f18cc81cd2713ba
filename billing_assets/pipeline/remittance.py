"""Remittance step: plan records for remittable hours, then deliver what is due.

Planning is one short transaction per hour (serialised per target, because
the carried balance spans hours). Delivery never holds a transaction across
the network: rows are claimed with a lease, sent, and their outcomes written
in small batches, so a crash anywhere leaves rows that come back with the
same tracking id.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import groupby

from sqlalchemy import Engine

from billing_assets.accounts.model import Accounts
from billing_assets.core.hourly import METRICS
from billing_assets.core.remittance import backoff_seconds, plan_hour
from billing_assets.delivery.csv_files import CsvLine, file_name_for, render_batch, write_batch_file
from billing_assets.delivery.killbill import KillBillClient
from billing_assets.delivery.outcome import UsageRecord
from billing_assets.storage import downstream as store


@dataclass(frozen=True)
class DeliverySettings:
    lease: timedelta = timedelta(minutes=10)
    chunk: int = 2000
    """Kill Bill rows per claim: bounded so a lease outlives the sends it covers."""
    csv_chunk: int = 20_000
    """CSV rows per claim (and at most per batch file): a batch is written in one go."""
    flush_every: int = 500
    backoff_base_s: float = 30.0
    backoff_max_s: float = 3600.0


@dataclass
class PlanStats:
    records: int = 0
    quantity: int = 0
    by_hour: dict[str, int] = field(default_factory=dict)


@dataclass
class DeliveryStats:
    accepted: int = 0
    retryable: int = 0
    refused: int = 0
    files: list[str] = field(default_factory=list)
    stopped: dict[str, str] = field(default_factory=dict)
    """target -> why its delivery stopped early in this run (it is down, throttling)."""

    def add(self, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)


def plan_hour_records(connection, accounts: Accounts, hour: datetime, now: datetime, write: bool = True) -> list:
    """Plan one hour for every target in `connection`'s transaction; the new records.

    With `write=False` nothing is stored (recalculate --dry-run shows this list).
    """
    targets = sorted(accounts.targets)
    for name in targets:  # sorted: two planners never wait on each other in opposite order
        store.hour_lock(connection, "remittance_plan", name)
    inputs = store.load_plan_inputs(connection, hour, targets)
    records, accounted, carried = [], {}, {}
    for name in targets:
        one_record = accounts.targets[name].one_record_per_hour
        for account in accounts.accounts_of(name):
            for metric in METRICS:
                key = (name, account.account_id, metric)
                total = inputs.usage.get((account.account_id, metric), 0)
                before = key in inputs.accounted
                balance = inputs.carried.get(key, 0)
                if not before and total == 0 and balance <= 0:
                    continue  # an idle account: nothing to account for, nothing owed
                step = plan_hour(
                    name, account.account_id, metric, hour, total,
                    accounted=inputs.accounted.get(key, 0), planned_before=before,
                    revisions=inputs.revisions.get(key, 0), carried=balance, one_record_per_hour=one_record,
                )
                if not before or step.accounted != inputs.accounted[key]:
                    accounted[key] = step.accounted
                if step.carried != balance:
                    carried[key] = step.carried
                if step.record is not None:
                    records.append((step.record, account.subscription_key))
    if write:
        store.save_plan(connection, hour, records, accounted, carried, now)
        store.mark_remitted(connection, hour, now)
    return records


def plan_hours(engine: Engine, accounts: Accounts, hours: list[datetime], now: datetime) -> PlanStats:
    stats = PlanStats()
    for hour in hours:
        with engine.begin() as connection:
            records = plan_hour_records(connection, accounts, hour, now)
        stats.records += len(records)
        stats.quantity += sum(record.quantity for record, _ in records)
        stats.by_hour[hour.strftime("%Y-%m-%d-%H:%M")] = len(records)
    return stats


def _usage_record(row: store.Claimed) -> UsageRecord:
    return UsageRecord(row.target, row.account_id, row.subscription_key, row.metric, row.hour, row.quantity, row.tracking_id)


def deliver(
    engine: Engine,
    accounts: Accounts,
    run_id: str,
    clock: Callable[[], datetime],
    settings: DeliverySettings = DeliverySettings(),
    log: Callable[[str], None] = lambda message: None,
) -> DeliveryStats:
    stats = DeliveryStats()
    for name in sorted(accounts.targets):
        target = accounts.targets[name]
        if target.kind == "killbill":
            _deliver_killbill(engine, name, target, run_id, clock, settings, stats, log)
        else:
            _deliver_csv(engine, name, target, run_id, clock, settings, stats, log)
    return stats


def _deliver_killbill(engine, name, target, run_id, clock, settings: DeliverySettings, stats: DeliveryStats, log) -> None:
    with KillBillClient(target, name) as client:
        while name not in stats.stopped:
            now = clock()
            with engine.begin() as connection:
                hold = store.held_from(connection, name, now)
                claimed = store.claim_due(connection, name, now, run_id, settings.lease, settings.chunk, hold)
            if not claimed:
                return
            by_tracking = {row.tracking_id: row for row in claimed}
            attempted: set[int] = set()
            buffer: list[store.Attempt] = []
            stop = threading.Event()

            def flush() -> None:
                if buffer:
                    with engine.begin() as connection:
                        store.record_attempts(connection, buffer, run_id, clock())
                    buffer.clear()

            # Hour by hour, so a target sees hours in order even with requests in flight.
            for _, group in groupby(claimed, key=lambda row: row.hour):
                if stop.is_set():
                    break
                for record, outcome in client.send_many((_usage_record(row) for row in group), stop=stop):
                    row = by_tracking[record.tracking_id]
                    attempted.add(row.id)
                    next_at = None
                    if outcome.status == "retryable":
                        delay = backoff_seconds(row.attempts + 1, outcome.retry_after_s, settings.backoff_base_s, settings.backoff_max_s)
                        next_at = clock() + timedelta(seconds=delay)
                        if not stop.is_set():
                            stats.stopped[name] = outcome.detail
                            log(f"{name}: retryable ({outcome.detail}); stopping this target for this run, next attempt in {delay:.0f}s")
                        stop.set()
                    stats.add(outcome.status)
                    buffer.append(store.Attempt(row.id, row.attempts, outcome.status, outcome.http_status, outcome.detail, next_at))
                    if len(buffer) >= settings.flush_every:
                        flush()
            flush()
            untouched = [row.id for row in claimed if row.id not in attempted]
            if untouched:
                with engine.begin() as connection:
                    store.release(connection, untouched, run_id)


def _csv_lines(rows: list[store.Claimed]) -> list[CsvLine]:
    return [CsvLine(r.account_id, r.subscription_key, r.metric, r.hour, r.quantity, r.tracking_id, r.revision) for r in rows]


def _deliver_csv(engine, name, target, run_id, clock, settings: DeliverySettings, stats: DeliveryStats, log) -> None:
    with engine.connect() as connection:
        unfinished = store.unfinished_batches(connection, name)
    for file_name, rows in unfinished.items():
        log(f"{name}: finishing batch {file_name} reserved by an earlier run ({len(rows)} lines)")
        _write_and_finish(engine, name, target, file_name, rows, run_id, clock, stats)
    while True:
        now = clock()
        with engine.begin() as connection:
            claimed = store.claim_due(connection, name, now, run_id, settings.lease, settings.csv_chunk, None)
        if not claimed:
            return
        for hour, group in groupby(claimed, key=lambda row: row.hour):
            rows = list(group)
            content, line_of = render_batch(_csv_lines(rows))
            with engine.begin() as connection:
                file_name = store.reserve_batch(
                    connection, name, hour, rows, file_name_for, line_of, hashlib.sha256(content).hexdigest(), clock()
                )
            _write_and_finish(engine, name, target, file_name, rows, run_id, clock, stats)


def _write_and_finish(engine, name, target, file_name, rows, run_id, clock, stats: DeliveryStats) -> None:
    write_batch_file(target, file_name, _csv_lines(rows))  # adopts the file if a dead run already wrote these bytes
    with engine.begin() as connection:
        store.finish_batch(connection, name, file_name, rows, run_id, clock())
    stats.accepted += len(rows)
    stats.files.append(file_name)


def preview(engine: Engine, accounts: Accounts, registry, hours: list[datetime], now: datetime) -> list:
    """The records a recalculation would add: derive and plan in a transaction that is rolled back."""
    from billing_assets.pipeline.hourly import ledger_source_ids

    intervals = accounts.memberships.intervals()
    found = []
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            sources = ledger_source_ids(connection, registry)
            for hour in hours:
                store.derive_hour(connection, hour, intervals, sources, now)
                found += [record for record, _ in plan_hour_records(connection, accounts, hour, now, write=False)]
        finally:
            transaction.rollback()
    return found
