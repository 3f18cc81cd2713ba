"""Generated counter histories for property tests of the bucket arithmetic.

A few series over six minutes, each sample a growth, an idle step or a reset
(a drop to anything between 0 and the last total), at random sub-second times.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import strategies as st


@st.composite
def counter_histories(draw, start: datetime, tags=("tag",), max_growth: int = 10**9, per_series: int = 12):
    """Rows `(uuid, inbound_tag, collected_at, up_total, down_total, variant)`; `variant` (0-2)
    lets a caller vary a field such as the email between samples of one series."""
    rows = []
    for uuid in draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True)):
        tag = draw(st.sampled_from(tags))
        seconds = sorted(draw(st.sets(st.integers(0, 6 * 60 - 1), min_size=1, max_size=per_series)))
        up = down = 0
        for second in seconds:
            step = draw(st.sampled_from(["grow", "grow", "idle", "reset"]))
            if step == "grow":
                up, down = up + draw(st.integers(0, max_growth)), down + draw(st.integers(0, max_growth))
            elif step == "reset":
                up, down = draw(st.integers(0, up)), draw(st.integers(0, down))
            at = start + timedelta(seconds=second, microseconds=draw(st.integers(0, 999_999)))
            rows.append((uuid, tag, at, up, down, draw(st.integers(0, 2))))
    return rows
