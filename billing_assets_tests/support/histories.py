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


def sample_rows(history) -> list[tuple]:
    """A `counter_histories` draw as sample rows in SAMPLE_COLUMNS order (the email varies with `variant`)."""
    return [("node-1", "prod", uuid, tag, at, f"{uuid}{variant}@example.test", up, down) for uuid, tag, at, up, down, variant in history]


def window_and_baselines(rows, start, end) -> tuple[list[tuple], list[tuple]]:
    """Sample rows (SAMPLE_COLUMNS order) inside [start, end), and each such series' last row before start."""
    inside = [r for r in rows if start <= r[4] < end]
    series_inside = {r[:4] for r in inside}
    last_before: dict[tuple, tuple] = {}
    for row in sorted(rows, key=lambda r: r[4]):
        if row[4] < start and row[:4] in series_inside:
            last_before[row[:4]] = row
    return inside, list(last_before.values())


def sample_frame(rows):
    """Sample rows as the DataFrame `core.buckets.derive_minute_usage` takes."""
    import pandas as pd

    from billing_assets.core.buckets import SAMPLE_COLUMNS

    data = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    data["collected_at"] = pd.to_datetime(data["collected_at"], utc=True)
    return data
