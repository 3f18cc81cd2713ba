"""What each target must be told about an hour, given what it was told before.

Pure bookkeeping, per (target, account, metric):

- `accounted[h]` is the hour total the plan has already taken into account;
- `carried` is a signed balance not yet in any record: negative is credit (a
  downward correction, never sent as negative usage), positive is usage a
  one-record-per-hour target could not take for its own hour.

Each plan step moves `accounted[h]` to the hour's current total and moves
exactly the difference into new records plus `carried`, so at every step

    sum(records) + carried == sum(accounted) == ledger (planned hours)

which is the DESIGN.md invariant once records are split into accepted and
outstanding. Records are strictly positive. Tracking ids are uuid5 of the
record's key, so every retry and every reset re-sends the same id and the
target can recognise it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from billing_assets.core.timeutil import format_rfc3339

TRACKING_NAMESPACE = uuid.UUID("6f1c3a52-3d0e-5b7c-9a1e-5b3f2d8c4e10")


def tracking_id(target: str, account_id: str, metric: str, hour: datetime, revision: int) -> str:
    return str(uuid.uuid5(TRACKING_NAMESPACE, f"{target}|{account_id}|{metric}|{format_rfc3339(hour)}|{revision}"))


@dataclass(frozen=True)
class NewRecord:
    target: str
    account_id: str
    metric: str
    hour: datetime
    revision: int
    quantity: int
    tracking_id: str


@dataclass
class SeriesState:
    """One (target, account, metric): what the plan has done so far."""

    carried: int = 0
    planned_hours: set[datetime] = field(default_factory=set)
    accounted: dict[datetime, int] = field(default_factory=dict)
    revisions: dict[datetime, int] = field(default_factory=dict)
    """hour -> number of records (revisions) already created for it."""


@dataclass(frozen=True)
class Step:
    record: NewRecord | None
    carried: int
    accounted: int


def plan_hour(
    target: str,
    account_id: str,
    metric: str,
    hour: datetime,
    total: int,
    *,
    accounted: int,
    planned_before: bool,
    revisions: int,
    carried: int,
    one_record_per_hour: bool,
) -> Step:
    """The record (if any) that brings the target from `accounted` to `total` for `hour`.

    `planned_before`: the hour was planned already (even if it produced no
    record); for a one-record target such an hour takes no further record, so
    its difference is carried into the next hour planned for the first time.
    """
    difference = int(total) - int(accounted)
    if one_record_per_hour and planned_before:
        return Step(None, carried + difference, total)
    if difference == 0 and not (one_record_per_hour and carried > 0):
        return Step(None, carried, total)
    quantity = difference + carried
    if quantity <= 0:
        return Step(None, quantity, total)
    revision = 0 if one_record_per_hour else revisions
    record = NewRecord(target, account_id, metric, hour, revision, quantity, tracking_id(target, account_id, metric, hour, revision))
    return Step(record, 0, total)


def apply(state: SeriesState, target: str, account_id: str, metric: str, hour: datetime, total: int, one_record_per_hour: bool) -> NewRecord | None:
    """`plan_hour` against an in-memory `SeriesState` (used by tests and the property model)."""
    step = plan_hour(
        target, account_id, metric, hour, total,
        accounted=state.accounted.get(hour, 0),
        planned_before=hour in state.planned_hours,
        revisions=state.revisions.get(hour, 0),
        carried=state.carried,
        one_record_per_hour=one_record_per_hour,
    )
    state.carried = step.carried
    state.accounted[hour] = step.accounted
    state.planned_hours.add(hour)
    if step.record is not None:
        state.revisions[hour] = state.revisions.get(hour, 0) + 1
    return step.record


# --- Delivery bookkeeping ---------------------------------------------------

BACKOFF_BASE_S = 30.0
BACKOFF_MAX_S = 3600.0


def backoff_seconds(attempts: int, retry_after_s: float | None, base_s: float = BACKOFF_BASE_S, max_s: float = BACKOFF_MAX_S) -> float:
    """Delay before the next attempt after `attempts` failed ones.

    Exponential on the attempt count, never shorter than the target's own
    `Retry-After` (a 429 says exactly when it will listen again).
    """
    exponential = min(max_s, base_s * (2 ** max(0, min(attempts - 1, 20))))
    return max(exponential, float(retry_after_s or 0.0))
