"""What "now" is for the sensors and schedules that decide which windows are due.

A module-level function, not `datetime.now` inline, so a test can replay hours
of operation (an outage, late deliveries) against a fake clock shared with the
reference exporter, through the real sensor code.
"""

from __future__ import annotations

from datetime import datetime

from billing_assets.core.timeutil import now_utc


def now() -> datetime:
    return now_utc()
