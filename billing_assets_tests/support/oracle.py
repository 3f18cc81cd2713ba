"""The batch oracle: expected minute buckets from a complete set of samples.

Written from DESIGN.md's counter semantics alone, with plain dicts, loops and
exact fractions and no import from billing_assets, so a mistake shared with
the production code path cannot hide.

The rules, as DESIGN.md states them:
- a series is (node_id, env, uuid, inbound_tag), its samples ordered by time;
- the first sample of a series counts in full (counters start at zero);
- after that, delta = total - previous when total >= previous, else total
  (a counter reset: the exporter restarted and counted up from zero);
- a sample before billing_start only sets the baseline: it is never charged;
- uplink and downlink are independent; a delta lands in the minute bucket
  holding its collected_at.
A bucket row exists for every minute that holds a sample of the series (the
pipeline keeps a row, with zero usage, for idle and baseline-only minutes too).

Plausibility (issue 11, the registry's `max_bytes_per_second`, default 100
Gbit/s): a direction's delta larger than rate x the time since the series'
previous sample (32 days for its first sample) is held, i.e. counts 0.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from fractions import Fraction

GIB = 2**30
MAX_BYTES_PER_SECOND = 12_500_000_000
FIRST_SAMPLE_SPAN = timedelta(days=32)


def first_deliveries(samples) -> dict[tuple, tuple[int, int]]:
    """{identity: (uplink_total, downlink_total)}, keeping the first delivery of each identity.

    samples: iterable of (node_id, env, uuid, inbound_tag, collected_at, uplink_total, downlink_total).
    """
    kept: dict[tuple, tuple[int, int]] = {}
    for node, env, uuid, tag, at, up, down in samples:
        kept.setdefault((node, env, uuid, tag, at), (up, down))
    return kept


def _series(samples) -> dict[tuple, dict[datetime, tuple[int, int]]]:
    series: dict[tuple, dict[datetime, tuple[int, int]]] = {}
    for (node, env, uuid, tag, at), totals in first_deliveries(samples).items():
        series.setdefault((node, env, uuid, tag), {})[at] = totals
    return series


def _minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def _delta(previous: int | None, total: int) -> int:
    if previous is None or total < previous:
        return total
    return total - previous


def _plausible(delta: int, since: timedelta, rate: int) -> int:
    """delta, or 0 when it is over rate x since (exact: microseconds as a Fraction)."""
    bound = int(Fraction(since // timedelta(microseconds=1), 10**6) * rate)
    return 0 if delta > bound else delta


def expected_buckets(samples, billing_start: datetime, rate: int = MAX_BYTES_PER_SECOND) -> dict[tuple, tuple[int, int]]:
    """{(node_id, env, uuid, inbound_tag, bucket_start): (uplink_bytes, downlink_bytes)}.

    One entry per minute holding at least one sample; minutes whose samples
    all precede billing_start hold (0, 0). Duplicate identities: the first
    delivery in iteration order wins.
    """
    buckets: dict[tuple, list[int]] = {}
    for key, points in _series(samples).items():
        previous: tuple[int, int] | None = None
        previous_at: datetime | None = None
        for at in sorted(points):
            up, down = points[at]
            since = FIRST_SAMPLE_SPAN if previous_at is None else at - previous_at
            d_up = _plausible(_delta(previous[0] if previous else None, up), since, rate)
            d_down = _plausible(_delta(previous[1] if previous else None, down), since, rate)
            previous, previous_at = (up, down), at
            total = buckets.setdefault((*key, _minute(at)), [0, 0])
            if at >= billing_start:
                total[0] += d_up
                total[1] += d_down
    return {key: (value[0], value[1]) for key, value in buckets.items()}


def expected_sample_counts(samples) -> dict[tuple, int]:
    """{bucket key: number of distinct sample identities in that minute}."""
    counts: dict[tuple, int] = {}
    for key, points in _series(samples).items():
        for at in points:
            counts[(*key, _minute(at))] = counts.get((*key, _minute(at)), 0) + 1
    return counts


def expected_amount_nanos(uplink_bytes: int, downlink_bytes: int, uplink_per_gib: str, downlink_per_gib: str) -> int:
    """Price of a bucket in nano-units: rates per GiB, rounded half up once per bucket."""
    exact = (uplink_bytes * Fraction(uplink_per_gib) + downlink_bytes * Fraction(downlink_per_gib)) * 10**9 / GIB
    floor = exact.numerator // exact.denominator
    return floor + (1 if exact - floor >= Fraction(1, 2) else 0)


def within(buckets: dict, start: datetime, end: datetime) -> dict:
    return {key: value for key, value in buckets.items() if start <= key[4] < end}


def exporter_samples(shape_model, node_id: str, env: str, since: datetime, until: datetime):
    """Flatten a reference exporter's traffic model into oracle tuples."""
    for item in shape_model.iter_items(since, until):
        at = datetime.fromisoformat(item["collected_at"].replace("Z", "+00:00"))
        for sample in item["samples"]:
            yield (node_id, env, sample["uuid"], sample["inbound_tag"], at,
                   sample["uplink_bytes_total"], sample["downlink_bytes_total"])


ONE_HOUR = timedelta(hours=1)


def ledger_problems(buckets: dict, entries, uplink_per_gib: str = "0.02", downlink_per_gib: str = "0.05") -> list[str]:
    """Every way the ledger disagrees with DESIGN.md's rules for these buckets ([] when none).

    buckets: {bucket key: (uplink_bytes, downlink_bytes)}; entries: ledger rows as
    mappings. Per bucket: entry_seq runs 1..n, entry 1 is the only `charge` and
    the rest are `correction`s, bytes sum to the bucket, and amounts sum to the
    bucket's price (default rates: the standard plan of DESIGN's demo pricing).
    A bucket with zero usage may have no entries at all.
    """
    problems: list[str] = []
    by_key: dict[tuple, list] = {}
    for row in entries:
        key = (row["node_id"], row["env"], row["uuid"], row["inbound_tag"], row["bucket_start"])
        by_key.setdefault(key, []).append(row)
    for key in sorted(set(by_key) | set(buckets), key=repr):
        rows = sorted(by_key.get(key, []), key=lambda r: r["entry_seq"])
        up, down = buckets.get(key, (None, None))
        if up is None:
            problems.append(f"{key}: ledger entries for a bucket that does not exist")
            continue
        if not rows:
            if (up, down) != (0, 0):
                problems.append(f"{key}: bucket {(up, down)} was never charged")
            continue
        seqs = [r["entry_seq"] for r in rows]
        if seqs != list(range(1, len(rows) + 1)):
            problems.append(f"{key}: entry_seq {seqs} is not 1..{len(rows)}")
        kinds = [r["entry_kind"] for r in rows]
        if kinds[0] != "charge" or any(kind != "correction" for kind in kinds[1:]):
            problems.append(f"{key}: entry kinds {kinds} (one charge first, then corrections only)")
        charged = (sum(r["uplink_bytes"] for r in rows), sum(r["downlink_bytes"] for r in rows))
        if charged != (up, down):
            problems.append(f"{key}: ledger sums to {charged}, bucket holds {(up, down)}")
        price = expected_amount_nanos(up, down, uplink_per_gib, downlink_per_gib)
        amount = sum(int(r["amount_nanos"]) for r in rows)
        if amount != price:
            problems.append(f"{key}: ledger amount {amount} nanos, bucket price {price}")
    return problems
