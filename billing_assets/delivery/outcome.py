"""The two types shared between delivery and the remittance status machine.

`UsageRecord` is what one remittance row tells one target; `Outcome` is the
target's answer reduced to what the status machine needs (accepted /
retryable / refused, and when to retry). Keeping this boundary small lets
the database side be written and tested without knowing HTTP or files.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

Metric = Literal["uplink_bytes", "downlink_bytes"]
Status = Literal["accepted", "retryable", "refused"]

METRICS: tuple[str, ...] = ("uplink_bytes", "downlink_bytes")
DETAIL_LIMIT = 500


@dataclass(frozen=True)
class UsageRecord:
    target: str
    account_id: str
    subscription_key: str
    metric: Metric
    hour: datetime
    quantity: int
    tracking_id: str

    def __post_init__(self) -> None:
        # Checked here, not at the target: a negative or fractional amount
        # must never leave the system, whatever the target would accept.
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, not {self.metric!r}")
        if self.hour.tzinfo is None or self.hour.utcoffset() is None:
            raise ValueError("hour must be timezone-aware")
        if type(self.quantity) is not int or self.quantity < 0:
            raise ValueError("quantity must be an integer >= 0")
        if not self.tracking_id:
            raise ValueError("tracking_id must not be empty")

    @property
    def hour_utc(self) -> datetime:
        return self.hour.astimezone(timezone.utc)


@dataclass(frozen=True)
class Outcome:
    status: Status
    # The target's answer (or the local failure), truncated; never a secret.
    detail: str
    http_status: int | None = None
    retry_after_s: float | None = None

    def __post_init__(self) -> None:
        if self.status not in ("accepted", "retryable", "refused"):
            raise ValueError(f"unknown outcome status {self.status!r}")
        if len(self.detail) > DETAIL_LIMIT:
            object.__setattr__(self, "detail", self.detail[: DETAIL_LIMIT - 1] + "…")
