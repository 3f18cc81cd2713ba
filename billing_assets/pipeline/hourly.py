"""Hourly usage step: derive the hours from the ledger and judge their completeness.

Derivation and verdict are written in one transaction per hour, so the
remittance step never sees an hour's usage without the verdict it was
derived under.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine

from billing_assets.accounts.model import Accounts
from billing_assets.core.completeness import SourceFacts, Verdict, evaluate_hour
from billing_assets.core.hourly import HOUR
from billing_assets.core.timeutil import floor_minute
from billing_assets.registry.model import Registry
from billing_assets.storage import checkpoints
from billing_assets.storage import downstream as store
from billing_assets.storage.health import missing_windows


@dataclass(frozen=True)
class Force:
    """An operator's decision to remit hours that are not complete, from the run tags."""

    by: str
    reason: str


@dataclass
class HourResult:
    hour: datetime
    derived: store.DerivedHour
    verdict: Verdict
    forced: bool
    forced_by: str | None
    reason: str | None

    @property
    def remittable(self) -> bool:
        return self.verdict.complete or self.forced


def ledger_source_ids(connection: Connection, registry: Registry) -> list[str]:
    """Every source that may have ledger entries: the registry's plus any with a checkpoint.

    A source removed from the registry keeps its ledger; its usage is still
    the accounts' usage. Listing sources lets PostgreSQL walk the
    (source_id, bucket_start) index once per source instead of scanning it.
    """
    return sorted({source.source_id for source in registry.sources} | set(checkpoints.read_all(connection)))


def source_facts(connection: Connection, registry: Registry, hour: datetime) -> list[SourceFacts]:
    marks = checkpoints.read_all(connection)
    end = hour + HOUR
    facts = []
    for source in registry.sources:
        start = max(hour, floor_minute(source.billing_start))
        billing = source.enabled and start < end and source.mode != "legacy_latest"
        missing = tuple(missing_windows(connection, source.source_id, start, end)) if billing else ()
        facts.append(
            SourceFacts(
                source.source_id, source.enabled, source.mode, source.billing_start,
                (marks.get(source.source_id) or {}).get("last_successful_until"), missing,
            )
        )
    return facts


def derive_hours(
    engine: Engine,
    accounts: Accounts,
    registry: Registry,
    hours: list[datetime],
    now: datetime,
    settle: timedelta,
    force: Force | None = None,
) -> list[HourResult]:
    intervals = accounts.memberships.intervals()
    results = []
    for hour in hours:
        with engine.begin() as connection:
            derived = store.derive_hour(connection, hour, intervals, ledger_source_ids(connection, registry), now)
            verdict = evaluate_hour(hour, source_facts(connection, registry, hour), settle)
            by = force.by if force is not None and not verdict.complete else None
            row = store.write_completeness(
                connection, hour, verdict.complete, {"sources": verdict.sources, "settle_s": settle.total_seconds()},
                now, forced_by=by, reason=force.reason if by else None, derived=True,
            )
        results.append(HourResult(hour, derived, verdict, bool(row["forced"]), row["forced_by"], row["reason"]))
    return results
