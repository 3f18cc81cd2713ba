"""RFC3339 timestamps and exact integer time arithmetic for the exporter.

Window bounds are compared as integer microseconds since the Unix epoch so
that `since`/`until` written as `Z` or `+00:00`, with or without fractions,
select exactly the same snapshots; floats would misplace a bound that sits
on a snapshot boundary.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)


def parse(value: str) -> datetime:
    """Parse an RFC3339 timestamp; a value without an offset is rejected
    because guessing its zone would move a billing window by hours."""
    text = value.strip()
    if "T" not in text and "t" not in text:
        raise ValueError(f"not an RFC3339 timestamp: {value!r}")
    parsed = datetime.fromisoformat(text.replace("z", "Z"))
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"timestamp has no UTC offset: {value!r}")
    return parsed.astimezone(timezone.utc)


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch; naive datetimes are refused, not guessed."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("naive datetime: pass an aware (UTC) datetime")
    return (moment - EPOCH) // _ONE_US


def from_us(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def format_epoch_seconds(seconds: int) -> str:
    """`2026-11-21T10:07:15Z` for whole seconds: the snapshot wire format."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def format_utc(moment: datetime) -> str:
    """UTC with `Z`; fractions only when present, so whole-second bounds echo
    back exactly as a client is likely to have sent them."""
    moment = moment.astimezone(timezone.utc)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
