"""`billing status`: per-source health for operators (table) and machines (--json).

Exit code 1 when an enabled source is over its lag budget, so a cron job or a
probe can alert on it; 2 when the registry or the billing database cannot be
read (missing, or its schema missing or behind). Status only reads: it runs on
a read-only database, directory or replica and never migrates. Errors printed are
the checkpoint's messages, which never contain a credential.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

from billing_assets.reports.source_health import SourceHealth


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def _seconds(moment: str | None) -> str:
    """An RFC3339 time cut to whole seconds, so the column keeps its width."""
    if not moment:
        return "never"
    return moment.split(".", 1)[0].removesuffix("Z") + "Z"


def render_table(reports: list[SourceHealth], now: datetime) -> str:
    header = f"{'source':<16} {'enabled':<7} {'mode':<13} {'lag':>8} {'budget':>7} {'last success':<20} {'missing':>7} {'conflicts':>9} {'held':>5}  state"
    lines = [header]
    for r in reports:
        state = "disabled" if not r.enabled else ("LATE" if r.over_budget else "ok")
        if r.enabled and r.last_error:
            state += " (failing)"
        lines.append(
            f"{r.source_id:<16} {'yes' if r.enabled else 'no':<7} {r.mode:<13} {_age(r.lag_s):>8} {_age(r.lag_budget_s):>7} "
            f"{_seconds(r.last_success):<20} {r.missing_windows:>7} {r.conflicts:>9} {r.held:>5}  {state}"
        )
        if r.last_error:
            lines.append(f"{'':<16} last error: {r.last_error}")
        if r.dual_read is not None:
            lines.append(f"{'':<16} dual-read [{r.dual_read['since']}, {r.dual_read['until']}): {r.dual_read['summary']}")
    return "\n".join(lines)


def run_status(as_json: bool = False) -> int:
    from billing_assets.core.timeutil import format_rfc3339
    from billing_assets.reports.source_health import source_health
    from billing_assets.defs.automation import clock
    from billing_assets.defs.partitions import earliest_window
    from billing_assets.defs.resources import BillingStore
    from billing_assets.registry.model import RegistryError
    from billing_assets.storage.engine import SchemaNotReady

    store = BillingStore()
    try:
        registry = store.registry()
    except RegistryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    now = clock.now()
    try:
        reports = source_health(store.read_engine(), registry, now, store.settings().collect_lag, earliest_window(now))
    except SchemaNotReady as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    late = [r.source_id for r in reports if r.over_budget]
    if as_json:
        print(json.dumps({"now": format_rfc3339(now), "over_budget": late, "sources": [r.as_dict() for r in reports]}, indent=2))
    else:
        print(render_table(reports, now))
        print(f"\n{len(reports)} sources, {len(late)} over lag budget" + (f": {', '.join(late)}" if late else ""))
    return 1 if late else 0
