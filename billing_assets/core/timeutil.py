"""UTC time helpers shared by the exporter contract, partitions and storage.

All billing times are aware UTC datetimes; naive datetimes are a bug waiting to
shift a charge by hours, so they are rejected rather than guessed.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

MINUTE = timedelta(minutes=1)
MINUTE_KEY_FORMAT = "%Y-%m-%d-%H:%M"

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt!r}: billing times must carry a UTC offset")
    return dt.astimezone(timezone.utc)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def parse_rfc3339(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return utc(value)


def format_rfc3339(dt: datetime) -> str:
    dt = utc(dt)
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def floor_minute(dt: datetime) -> datetime:
    return utc(dt).replace(second=0, microsecond=0)


def ceil_minute(dt: datetime) -> datetime:
    floored = floor_minute(dt)
    return floored if floored == dt else floored + MINUTE


def minute_key(dt: datetime) -> str:
    return floor_minute(dt).strftime(MINUTE_KEY_FORMAT)


def parse_minute_key(key: str) -> datetime:
    return datetime.strptime(key, MINUTE_KEY_FORMAT).replace(tzinfo=timezone.utc)


def parse_duration(text: str | int | float) -> timedelta:
    """Durations as operators write them in YAML: `60s`, `5m`, `2h`, `32d`."""
    if isinstance(text, (int, float)):
        return timedelta(seconds=text)
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration like '60s', '5m', '2h' or '32d'")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])

