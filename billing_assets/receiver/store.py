"""What the reference receiver accepted, deduplicated on trackingId like Kill Bill.

The store is the receiver's own ledger: tests and the demo compare its totals
with ours, so it must never count a tracking id twice, and it remembers a
resend that carried *different* content (a conflict), because that would be
a bug on the sending side that dedup would otherwise hide.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone


@dataclass(frozen=True)
class UnitRecord:
    unit_type: str
    record_date: str
    amount: int


@dataclass(frozen=True)
class StoredUsage:
    subscription: str
    tracking_id: str
    units: tuple[UnitRecord, ...]
    accepted_at: str


class UsageStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_tracking_id: dict[str, StoredUsage] = {}
        self._requests: Counter[str] = Counter()
        self._conflicts: set[str] = set()

    def count_request(self, tracking_id: str) -> None:
        with self._lock:
            self._requests[tracking_id] += 1

    def accept(self, subscription: str, tracking_id: str, units: tuple[UnitRecord, ...]) -> bool:
        """True if new; False for a known tracking id (not counted again)."""
        accepted_at = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
        with self._lock:
            known = self._by_tracking_id.get(tracking_id)
            if known is not None:
                if (known.subscription, known.units) != (subscription, units):
                    self._conflicts.add(tracking_id)
                return False
            self._by_tracking_id[tracking_id] = StoredUsage(subscription, tracking_id, units, accepted_at)
            return True

    def records(self) -> list[dict]:
        with self._lock:
            stored = list(self._by_tracking_id.values())
        return [
            {
                "subscription": usage.subscription,
                "trackingId": usage.tracking_id,
                "unitType": unit.unit_type,
                "recordDate": unit.record_date,
                "amount": unit.amount,
                "accepted_at": usage.accepted_at,
            }
            for usage in stored
            for unit in usage.units
        ]

    def totals(self) -> dict[tuple[str, str], int]:
        totals: Counter[tuple[str, str]] = Counter()
        with self._lock:
            for usage in self._by_tracking_id.values():
                for unit in usage.units:
                    totals[(usage.subscription, unit.unit_type)] += unit.amount
        return dict(totals)

    def requests_for(self, tracking_id: str) -> int:
        with self._lock:
            return self._requests[tracking_id]

    def request_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._requests)

    def conflicts(self) -> list[str]:
        with self._lock:
            return sorted(self._conflicts)

    def accepted_count(self) -> int:
        with self._lock:
            return len(self._by_tracking_id)

    def clear(self) -> None:
        with self._lock:
            self._by_tracking_id.clear()
            self._requests.clear()
            self._conflicts.clear()
