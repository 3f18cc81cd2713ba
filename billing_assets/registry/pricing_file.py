"""Loading the price list (`BILLING_PRICING_FILE`), with the built-in default.

Rates are decimal strings per GiB so that "0.05" means exactly five cents.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path

import yaml

from billing_assets.core.pricing import DEFAULT_PRICING, Plan, Pricing


class PricingError(ValueError):
    pass


def _rate(plan: str, field: str, value) -> Decimal:
    try:
        rate = Decimal(str(value))
    except InvalidOperation:
        raise PricingError(f"pricing: plan {plan!r}: {field} {value!r} is not a decimal number") from None
    if rate < 0 or rate.as_tuple().exponent < -9:
        raise PricingError(f"pricing: plan {plan!r}: {field} must be >= 0 with at most 9 decimals")
    return rate


def parse_pricing(raw: dict) -> Pricing:
    if not isinstance(raw, dict) or not isinstance(raw.get("plans"), dict) or not raw["plans"]:
        raise PricingError("pricing: expected a mapping with a non-empty 'plans:' mapping")
    plans = {}
    for name, spec in raw["plans"].items():
        if not isinstance(spec, dict):
            raise PricingError(f"pricing: plan {name!r} must be a mapping")
        plans[name] = Plan(name, _rate(name, "uplink_per_gib", spec.get("uplink_per_gib")), _rate(name, "downlink_per_gib", spec.get("downlink_per_gib")))
    default = raw.get("default_plan", next(iter(plans)))
    if default not in plans:
        raise PricingError(f"pricing: default_plan {default!r} is not one of the plans")
    users = raw.get("users") or {}
    for uuid, plan in users.items():
        if plan not in plans:
            raise PricingError(f"pricing: user {uuid!r} is on unknown plan {plan!r}")
    currency = str(raw.get("currency", "USD"))
    return Pricing(currency=currency, default_plan=default, plans=plans, user_plans={str(k): v for k, v in users.items()})


def load_pricing(path: str | Path | None) -> Pricing:
    if not path:
        return DEFAULT_PRICING
    path = Path(path)
    if not path.exists():
        raise PricingError(f"pricing file {path} does not exist")
    return parse_pricing(yaml.safe_load(path.read_text()))
