"""Ledger lines to hourly usage per (account, metric, hour), given who paid when.

Memberships are intervals: a user's entry with the latest `since` <= t owns
minute t, and no `since` means from the beginning. The SQL path (storage/
downstream.py) joins the ledger to exactly the intervals `intervals()` yields,
so the two paths cannot disagree about a move on a minute boundary; the
property tests compare them.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

METRICS = ("uplink_bytes", "downlink_bytes")
HOUR = timedelta(hours=1)
# Stand-ins for "from the beginning" / "for ever" that every database orders correctly.
BEGINNING = datetime(1970, 1, 1, tzinfo=timezone.utc)
FOREVER = datetime(9999, 1, 1, tzinfo=timezone.utc)


def floor_hour(value: datetime) -> datetime:
    return value.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class Interval:
    uuid: str
    account_id: str
    valid_from: datetime
    valid_until: datetime


class Memberships:
    """uuid -> sorted [(since, account_id)], answering `account_at` by bisection."""

    def __init__(self, by_user: dict[str, list[tuple[datetime, str]]]):
        self._by_user = by_user
        self._starts = {user: [since for since, _ in entries] for user, entries in by_user.items()}

    @classmethod
    def build(cls, entries: Iterable[tuple[str, datetime | None, str]]) -> "Memberships":
        by_user: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
        for user, since, account_id in entries:
            by_user[user].append((since or BEGINNING, account_id))
        for user in by_user:
            by_user[user].sort()
        return cls(dict(by_user))

    def account_at(self, user: str, minute: datetime) -> str | None:
        """The account that pays for `user` at `minute`, or None (unassigned)."""
        starts = self._starts.get(user)
        if not starts:
            return None
        index = bisect.bisect_right(starts, minute) - 1
        return self._by_user[user][index][1] if index >= 0 else None

    def intervals(self) -> list[Interval]:
        result = []
        for user, entries in sorted(self._by_user.items()):
            for position, (since, account_id) in enumerate(entries):
                until = entries[position + 1][0] if position + 1 < len(entries) else FOREVER
                if until > since:
                    result.append(Interval(user, account_id, since, until))
        return result

    def users(self) -> set[str]:
        return set(self._by_user)


@dataclass
class HourlySums:
    assigned: dict[tuple[str, str, datetime], int]
    """(account_id, metric, hour) -> bytes."""
    unassigned: dict[tuple[str, str, datetime], int]
    """(uuid, metric, hour) -> bytes of users no account paid for at that minute."""


def hourly_sums(lines: Iterable[tuple[str, datetime, int, int]], memberships: Memberships) -> HourlySums:
    """`lines`: (uuid, bucket_start, uplink_bytes, downlink_bytes) ledger entries, any sources."""
    assigned: dict[tuple[str, str, datetime], int] = defaultdict(int)
    unassigned: dict[tuple[str, str, datetime], int] = defaultdict(int)
    for user, minute, uplink, downlink in lines:
        hour = floor_hour(minute)
        account = memberships.account_at(user, minute)
        target, who = (assigned, account) if account is not None else (unassigned, user)
        target[(who, "uplink_bytes", hour)] += int(uplink)
        target[(who, "downlink_bytes", hour)] += int(downlink)
    return HourlySums(dict(assigned), dict(unassigned))
