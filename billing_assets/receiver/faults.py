"""Switchable misbehaviour of the reference receiver, one field per failure
mode the remittance status machine must survive (DESIGN.md, seeds 001/002).

Set `server.faults = ReceiverFaults(...)` from Python (that also restarts the
counter behind `fail_first_n`), or `POST /_faults` with the same fields as
JSON from the demo or another process. Faults apply to `POST /1.0/kb/usages`
only; the control endpoints (`/_faults`, `/1.0/kb/usages/accepted`,
`/healthz`) keep answering so a test can always see and undo what it did.
`down` therefore reads the request before closing; an outage where
connections are refused outright is `server.stop()` / `server.start()` (same
port), or stopping the `billing-receiver` process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class ReceiverFaults:
    down: bool = False
    """Read the request, then close the connection without answering or storing (an outage)."""
    fail_5xx: bool = False
    """Answer every usage request `status_5xx` without storing it."""
    status_5xx: int = 503
    fail_first_n: int = 0
    """Only the first n usage requests since these faults were installed get `status_5xx`."""
    rate_limit: bool = False
    """Answer 429 with `Retry-After: retry_after` (seconds, or an HTTP-date, sent verbatim)."""
    retry_after: str = "1"
    refuse_subscriptions: frozenset[str] = field(default_factory=frozenset)
    """Subscription external keys answered `refuse_status` with a Kill Bill-like error body."""
    refuse_status: int = 400
    accept_then_drop: bool = False
    """Store the record (dedup applies), then close the connection without answering."""
    delay_s: float = 0.0
    """Sleep this long before handling a usage request (client timeouts, concurrency)."""
    trickle_s: float = 0.0
    """Write the whole answer (status line and headers too) 8 bytes at a time,
    sleeping this long between writes: no single read ever times out, so only
    a total deadline on the client side stops it. The record is stored first."""

    def __post_init__(self) -> None:
        self.refuse_subscriptions = frozenset(self.refuse_subscriptions)
        if not 500 <= self.status_5xx <= 599:
            raise ValueError("status_5xx must be 5xx")
        if not 400 <= self.refuse_status <= 499 or self.refuse_status in (408, 409, 429):
            raise ValueError("refuse_status must be a 4xx that means 'refused' (not 408, 409 or 429)")
        if self.delay_s < 0 or self.trickle_s < 0 or self.fail_first_n < 0:
            raise ValueError("delay_s, trickle_s and fail_first_n must be >= 0")

    @classmethod
    def from_dict(cls, data: dict) -> ReceiverFaults:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["refuse_subscriptions"] = sorted(self.refuse_subscriptions)
        return data
