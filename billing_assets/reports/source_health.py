"""One health report per source, shared by `billing status` and the asset checks.

Lag is data lag: now minus the checkpoint's contiguous high-water mark, so a
source that answers but returns nothing new is as late as one that is down.
Errors come from the checkpoint, which stores only secret-free messages
(SourceFetchError never carries a credential).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine

from billing_assets.core.timeutil import MINUTE, ceil_minute, floor_minute, format_rfc3339
from billing_assets.registry.model import Registry
from billing_assets.storage import checkpoints
from billing_assets.storage.dual_read import compare_dual_read
from billing_assets.storage.health import conflict_counts, missing_windows
from billing_assets.storage.quarantine import unreleased_counts

DUAL_READ_WINDOW = timedelta(hours=2)


@dataclass
class SourceHealth:
    source_id: str
    enabled: bool
    mode: str
    lag_budget_s: float
    lag_s: float | None
    collected_until: str | None
    last_success: str | None
    last_attempt: str | None
    last_error: str | None
    consecutive_failures: int
    missing_windows: int
    """Closed windows since billing_start never collected (includes the lag)."""
    holes: int
    """Of those, the ones before the checkpoint: skipped, not merely late."""
    first_gap: str | None
    conflicts: int
    held: int = 0
    """Implausible deltas in usage_quarantine, not billed until released."""
    problems: list[str] = field(default_factory=list)
    dual_read: dict | None = None
    """`dual` sources: legacy /latest samples vs window data before the checkpoint (storage/dual_read.py)."""

    @property
    def over_budget(self) -> bool:
        return self.enabled and (self.lag_s is None or self.lag_s > self.lag_budget_s)

    def as_dict(self) -> dict:
        return {**asdict(self), "over_budget": self.over_budget}


def _iso(value: datetime | None) -> str | None:
    return format_rfc3339(value) if value else None


def source_health(engine: Engine, registry: Registry, now: datetime, lag: timedelta, partitions_start: datetime) -> list[SourceHealth]:
    """Health of every registered source, in registry order."""
    closed_until = floor_minute(now - lag)
    with engine.connect() as connection:
        marks = checkpoints.read_all(connection)
        conflicts = conflict_counts(connection)
        held = unreleased_counts(connection)
        reports = []
        for source in registry.sources:
            mark = marks.get(source.source_id) or {}
            high_water = mark.get("last_successful_until")
            if source.mode == "legacy_latest":
                # /latest proves no completeness, so there is no high-water mark: lag is the last good pull's age.
                reports.append(_legacy_health(source, mark, now, conflicts.get(source.source_id, 0)))
                continue
            start = max(floor_minute(source.billing_start), ceil_minute(partitions_start))
            gaps = missing_windows(connection, source.source_id, start, closed_until)
            report = SourceHealth(
                source_id=source.source_id,
                enabled=source.enabled,
                mode=source.mode,
                lag_budget_s=source.lag_budget.total_seconds(),
                lag_s=round((now - high_water).total_seconds(), 1) if high_water else None,
                collected_until=_iso(high_water),
                last_success=_iso(mark.get("last_succeeded_at")),
                last_attempt=_iso(mark.get("last_attempted_at")),
                last_error=mark.get("last_error"),
                consecutive_failures=int(mark.get("consecutive_failures") or 0),
                missing_windows=_minutes(gaps),
                holes=_minutes([(a, min(b, high_water)) for a, b in gaps if high_water and a < high_water]),
                first_gap=f"[{format_rfc3339(gaps[0][0])}, {format_rfc3339(gaps[0][1])})" if gaps else None,
                conflicts=conflicts.get(source.source_id, 0),
                held=held.get(source.source_id, 0),
            )
            if report.over_budget:
                report.problems.append("never collected" if high_water is None else "over lag budget")
            if report.last_error:
                report.problems.append("last attempt failed")
            if report.conflicts:
                report.problems.append("quarantined conflicts")
            if report.held:
                report.problems.append("implausible usage held (billing quarantine list)")
            if source.mode == "dual":
                compared = compare_dual_read(
                    connection, source.source_id, max(start, now - DUAL_READ_WINDOW), min(high_water or start, now)
                )
                report.dual_read = compared.as_dict()
                if compared.missing or compared.mismatched:
                    report.problems.append("dual-read differences")
            reports.append(report)
    return reports


def _legacy_health(source, mark: dict, now: datetime, conflicts: int) -> SourceHealth:
    pulled = mark.get("last_succeeded_at")
    report = SourceHealth(
        source_id=source.source_id,
        enabled=source.enabled,
        mode=source.mode,
        lag_budget_s=source.lag_budget.total_seconds(),
        lag_s=round((now - pulled).total_seconds(), 1) if pulled else None,
        collected_until=None,
        last_success=_iso(pulled),
        last_attempt=_iso(mark.get("last_attempted_at")),
        last_error=mark.get("last_error"),
        consecutive_failures=int(mark.get("consecutive_failures") or 0),
        missing_windows=0,
        holes=0,
        first_gap=None,
        conflicts=conflicts,
        problems=["completeness unknown (legacy /latest)"],
    )
    if report.over_budget:
        report.problems.append("never pulled" if pulled is None else "over lag budget")
    if report.last_error:
        report.problems.append("last attempt failed")
    if report.conflicts:
        report.problems.append("quarantined conflicts")
    return report


def _minutes(ranges: list[tuple[datetime, datetime]]) -> int:
    return sum(int((b - a) // MINUTE) for a, b in ranges)
