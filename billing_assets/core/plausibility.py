"""How much usage one counter step can plausibly carry.

A counter that jumps by more than any link could have moved in the time since
its previous sample is a broken or hostile exporter (a bit flip, a counter
sent as 2**63-1), not usage: billing it would be a nine-figure charge that the
append-only ledger could never take back. Such a delta is *held* (quarantined,
shown, billed only when an operator releases it) instead.

The bound is `max_bytes_per_second x elapsed`, per series and direction:

- after a previous sample (growth or reset alike: a restarted counter counted
  up from zero within the gap), `elapsed` is the time since that sample;
- a series' first sample has no previous one, and its counter may have run
  since the exporter started, so `elapsed` is `FIRST_SAMPLE_SPAN`.

Because every counted delta is bounded by rate x elapsed, a minute bucket can
never exceed rate x (FIRST_SAMPLE_SPAN + its span), far below 2**63 for every
rate the registry accepts: bucket and ledger sums cannot overflow int64 or
BIGINT on either database. All arithmetic is integer (microseconds), so the
pandas path and the PostgreSQL statement agree to the byte at the boundary.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np

DEFAULT_MAX_BYTES_PER_SECOND = 12_500_000_000  # 100 Gbit/s: more than any proxy user's link
MAX_BYTES_PER_SECOND_LIMIT = 10**12  # keeps rate x FIRST_SAMPLE_SPAN (2.8e18) inside int64
FIRST_SAMPLE_SPAN = timedelta(days=32)
FIRST_SAMPLE_SPAN_US = int(FIRST_SAMPLE_SPAN / timedelta(microseconds=1))
US_PER_S = 1_000_000


def bound_bytes(max_bytes_per_second: int, elapsed_us: int | None) -> int:
    """floor(rate x elapsed) in bytes; `elapsed_us` None for a series' first sample."""
    us = FIRST_SAMPLE_SPAN_US if elapsed_us is None else elapsed_us
    seconds, rest = divmod(us, US_PER_S)
    return seconds * max_bytes_per_second + rest * max_bytes_per_second // US_PER_S


def bounds(max_bytes_per_second: int, elapsed_us: np.ndarray, has_previous: np.ndarray) -> np.ndarray:
    """Vectorised `bound_bytes` over int64 arrays (no intermediate exceeds int64 for allowed rates)."""
    us = np.where(has_previous, elapsed_us, FIRST_SAMPLE_SPAN_US).astype(np.int64)
    seconds, rest = np.divmod(us, US_PER_S)
    rate = np.int64(max_bytes_per_second)
    return seconds * rate + (rest * rate) // US_PER_S


def describe_hold(held_uplink: int, held_downlink: int, elapsed_us: int | None, bound: int, rate: int) -> str:
    """An operator's sentence for one held sample (status, checks, the quarantine command)."""
    parts = [f"{name} +{value:,} B" for name, value in (("uplink", held_uplink), ("downlink", held_downlink)) if value]
    since = "as a series' first sample" if elapsed_us is None else f"in {elapsed_us / US_PER_S:g} s"
    return f"{' and '.join(parts)} {since} exceeds {rate:,} B/s (bound {bound:,} B)"
