"""Prices per GiB and per direction, turned into exact integer nano-units.

Money is never a float here: a minute bucket's amount is computed in integer
nano-currency-units (round half up), so ledger sums are exact on every database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from functools import cached_property

GIB = 1 << 30
NANOS = 10**9


@dataclass(frozen=True)
class Plan:
    name: str
    uplink_per_gib: Decimal
    downlink_per_gib: Decimal

    @cached_property
    def nano_rates(self) -> tuple[int, int]:
        """(uplink, downlink) nano-units per GiB; Decimal arithmetic once per plan, not per bucket."""
        return int(self.uplink_per_gib * NANOS), int(self.downlink_per_gib * NANOS)

    def amount_nanos(self, uplink_bytes: int, downlink_bytes: int) -> int:
        """Price of a bucket in nano-units; rates are per GiB (2**30 bytes).

        Python integers, not int64: a first sample counts its whole counter, and
        terabytes times a rate overflow 64 bits.
        """
        up_rate, down_rate = self.nano_rates
        numerator = int(uplink_bytes) * up_rate + int(downlink_bytes) * down_rate
        quotient, remainder = divmod(numerator, GIB)
        return quotient + (1 if 2 * remainder >= GIB else 0)


@dataclass(frozen=True)
class Pricing:
    currency: str
    default_plan: str
    plans: dict[str, Plan]
    user_plans: dict[str, str] = field(default_factory=dict)

    def plan_for(self, uuid: str) -> Plan:
        return self.plans[self.user_plans.get(uuid, self.default_plan)]


DEFAULT_PRICING = Pricing(
    currency="USD",
    default_plan="standard",
    plans={"standard": Plan("standard", Decimal("0.02"), Decimal("0.05"))},
)


def nanos_to_amount(nanos: int) -> Decimal:
    return (Decimal(nanos) / NANOS).quantize(Decimal("0.000000001"), rounding=ROUND_HALF_UP)
