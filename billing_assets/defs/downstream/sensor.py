"""The remittance sensor: one run per contiguous range of hours that need it.

An hour needs a run when (1) it is not remitted yet and its sources have now
collected past its end plus the settle time, (2) one of its records is a
retry whose time has come, or (3) the ledger gained entries for it after it
was derived (late data, a reconcile backfill): re-deriving turns those into
revisions, so corrections flow out without anyone asking; or (4) the
accounts file changed since the last tick: a user assigned with a `since`
that covers past hours turns their unassigned usage into remittable usage,
so every remitted hour of the lookback is re-derived (a no-op where nothing
moved: the plan adds records only for differences).

Cheap per tick: completeness is evaluated only for hours not remitted yet
inside the lookback, due retries come from the (target, status,
next_attempt_at) index, and ledger changes from an index-only scan of
entries created since the last tick (with an overlap, because an entry's
created_at is taken before its transaction commits).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import dagster as dg

from billing_assets.core.completeness import evaluate_hour
from billing_assets.core.hourly import floor_hour
from billing_assets.core.timeutil import format_rfc3339, parse_rfc3339
from billing_assets.defs.downstream.launch import DOWNSTREAM_ASSETS
from billing_assets.defs.downstream.partitions import REMITTANCE_TAG, hour_key, hour_partitions, range_tags
from billing_assets.defs.automation import clock
from billing_assets.defs.resources import BillingStore
from billing_assets.pipeline.hourly import source_facts
from billing_assets.registry.model import RegistryError
from billing_assets.storage import downstream as store

HOUR = timedelta(hours=1)
LEDGER_OVERLAP = timedelta(minutes=10)
UNFINISHED = [
    dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING,
]
TRIGGER_TAG = "billing/trigger"


def contiguous(hours: list[datetime]) -> list[tuple[datetime, datetime]]:
    ranges: list[list[datetime]] = []
    for hour in sorted(set(hours)):
        if ranges and hour - ranges[-1][1] == HOUR:
            ranges[-1][1] = hour
        else:
            ranges.append([hour, hour])
    return [(first, last) for first, last in ranges]


def hours_needing_a_run(
    connection, registry, now: datetime, lookback: timedelta, settle: timedelta, ledger_seen: datetime | None,
    accounts_changed: bool = False,
):
    """(why per hour, newest ledger created_at seen)."""
    first = max(floor_hour(now) - lookback, hour_partitions.start)
    first = floor_hour(first) + (HOUR if floor_hour(first) < first else timedelta(0))
    end = floor_hour(now)  # hours that have ended
    verdicts = store.remittable_hours(connection, first, end)
    why: dict[datetime, str] = {}
    hour = first
    while hour < end:
        row = verdicts.get(hour)
        if not (row and row["remitted_at"]):
            if row and row["forced"]:
                why[hour] = "forced"
            elif evaluate_hour(hour, source_facts(connection, registry, hour), settle).complete:
                why[hour] = "complete"
        hour += HOUR
    if accounts_changed:
        for hour, row in verdicts.items():
            if row["remitted_at"]:
                why.setdefault(hour, "accounts changed")
    for hour in store.due_retry_hours(connection, now):
        if hour >= hour_partitions.start:
            why.setdefault(hour, "retry due")
    after = (ledger_seen - LEDGER_OVERLAP) if ledger_seen else now - lookback
    changed = store.ledger_changed_minutes(connection, after)
    newest = max(changed.values(), default=ledger_seen)
    late: dict[datetime, datetime] = {}
    for minute, created in changed.items():
        hour = floor_hour(minute)
        late[hour] = max(late.get(hour, created), created)
    if late:
        for hour, row in store.remittable_hours(connection, min(late), max(late) + HOUR).items():
            if hour in late and row["remitted_at"] and (row["derived_at"] is None or late[hour] > row["derived_at"]):
                why.setdefault(hour, "ledger changed")
    return why, newest


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    target=dg.AssetSelection.assets(*DOWNSTREAM_ASSETS),
)
def remittance_sensor(context: dg.SensorEvaluationContext, billing: BillingStore):
    """Requests hourly_usage + remittance for hours that are ready, due for retry, or changed."""
    if context.instance.get_run_records(filters=dg.RunsFilter(tags={REMITTANCE_TAG: "true"}, statuses=UNFINISHED), limit=1):
        return dg.SkipReason("a remittance run is still queued or running")
    try:
        registry = billing.registry()
    except RegistryError as error:
        return dg.SkipReason(f"registry not loaded: {error}")
    try:
        state = json.loads(context.cursor) if context.cursor else {}
    except ValueError:
        state = {}
    seen = parse_rfc3339(state["ledger_seen"]) if state.get("ledger_seen") else None
    digest = billing.accounts_digest()
    changed = digest is not None and state.get("accounts") not in (None, digest)
    now = clock.now()
    with billing.read_engine().connect() as connection:
        why, newest = hours_needing_a_run(connection, registry, now, billing.lookback(), billing.settle(), seen, changed)
    cursor = json.dumps({**({"ledger_seen": format_rfc3339(newest)} if newest else {}), **({"accounts": digest} if digest else {})})
    if not why:
        return dg.SensorResult(skip_reason=dg.SkipReason("no hour to remit"), cursor=cursor)
    requests = []
    for first, last in contiguous(list(why)):
        reasons = sorted({why[h] for h in why if first <= h <= last})
        context.log.info(f"hours {hour_key(first)}..{hour_key(last)}: {', '.join(reasons)}")
        requests.append(
            dg.RunRequest(
                run_key=f"remit:{hour_key(first)}:{hour_key(last)}:{format_rfc3339(now)}",
                tags={**range_tags(first, last), REMITTANCE_TAG: "true", TRIGGER_TAG: "+".join(reasons)},
            )
        )
    return dg.SensorResult(run_requests=requests, cursor=cursor)
