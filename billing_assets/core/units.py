"""Figures as a person reads them: bytes in binary units, money with its currency."""

from __future__ import annotations

from decimal import Decimal


def human_bytes(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{value} B"


def money(amount: Decimal, currency: str) -> str:
    """Exact, with trailing zeros dropped (nano-unit amounts are mostly zeros) but never in exponent form."""
    text = format(amount.normalize(), "f") if amount else "0"
    return f"{text} {currency}"
