"""Counter semantics: how cumulative exporter totals become usage deltas.

The exporter reports totals that only grow until xray restarts and counts
from zero again. A drop therefore means "restart", and the new total is the
usage since that restart. Guessing anything cleverer (e.g. wrap-around) would
charge bytes nobody used.
"""

from __future__ import annotations

import numpy as np


def counter_delta(previous_total: int | None, total: int) -> int:
    """Usage between two consecutive samples of one series (first sample: `None`)."""
    if previous_total is None or total < previous_total:
        return total
    return total - previous_total


def counter_deltas(previous: np.ndarray, current: np.ndarray, has_previous: np.ndarray) -> np.ndarray:
    """Vectorised `counter_delta` over aligned int64 arrays."""
    reset_or_first = (~has_previous) | (current < previous)
    return np.where(reset_or_first, current, current - previous)
