"""Collection and reconcile knobs, read from the environment at evaluation time.

Environment variables (not sensor config) so the same values apply to the
sensor, the reconcile schedule and `billing status`, and an operator can change
them without touching the code location.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from billing_assets.core.timeutil import parse_duration


def _duration(name: str, default: str) -> timedelta:
    return parse_duration(os.environ.get(name) or default)


@dataclass(frozen=True)
class CollectSettings:
    lag: timedelta
    """A window is due only once `now - lag` is past its end: exporters publish a scrape a little late."""
    overlap: timedelta
    """Windows before the checkpoint re-requested with each run, so late samples reach their buckets."""
    max_range: timedelta
    """Longest range of one run: after an outage, catch-up happens in runs of at most this."""
    max_backoff: timedelta
    """Longest wait between attempts at a failing source."""

    @classmethod
    def from_env(cls) -> "CollectSettings":
        return cls(
            lag=_duration("BILLING_COLLECT_LAG", "30s"),
            overlap=_duration("BILLING_COLLECT_OVERLAP", "1m"),
            max_range=_duration("BILLING_COLLECT_MAX_RANGE", "2h"),
            max_backoff=_duration("BILLING_COLLECT_MAX_BACKOFF", "10m"),
        )


def reconcile_horizon() -> timedelta:
    """How far back the reconcile schedule re-materializes each source."""
    return _duration("BILLING_RECONCILE_HORIZON", "2h")
