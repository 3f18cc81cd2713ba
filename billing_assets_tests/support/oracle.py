"""The batch oracle: expected minute buckets from a complete set of samples.

Written from DESIGN.md's counter semantics alone, with plain dicts and loops
and no import from billing_assets, so a mistake shared with the production
code path cannot hide.
"""

from __future__ import annotations

from datetime import datetime, timedelta


def expected_buckets(samples, billing_start: datetime) -> dict[tuple, tuple[int, int]]:
    """samples: iterable of (node_id, env, uuid, inbound_tag, collected_at, uplink_total, downlink_total).

    Returns {(node_id, env, uuid, inbound_tag, bucket_start): (uplink_bytes, downlink_bytes)}
    for every minute that holds at least one sample at or after billing_start.
    Duplicate identities must already be resolved by the caller (first delivery wins).
    """
    series: dict[tuple, dict[datetime, tuple[int, int]]] = {}
    for node, env, uuid, tag, at, up, down in samples:
        series.setdefault((node, env, uuid, tag), {}).setdefault(at, (up, down))
    buckets: dict[tuple, list[int]] = {}
    for key, points in series.items():
        previous = None
        for at in sorted(points):
            up, down = points[at]
            if previous is None:
                d_up, d_down = up, down
            else:
                d_up = up - previous[0] if up >= previous[0] else up
                d_down = down - previous[1] if down >= previous[1] else down
            previous = (up, down)
            if at < billing_start:
                continue
            minute = at.replace(second=0, microsecond=0)
            total = buckets.setdefault((*key, minute), [0, 0])
            total[0] += d_up
            total[1] += d_down
    return {key: (value[0], value[1]) for key, value in buckets.items()}


def within(buckets: dict, start: datetime, end: datetime) -> dict:
    return {key: value for key, value in buckets.items() if start <= key[4] < end}


def exporter_samples(shape_model, node_id: str, env: str, since: datetime, until: datetime):
    """Flatten a reference exporter's traffic model into oracle tuples."""
    from datetime import datetime as _dt

    for item in shape_model.iter_items(since, until):
        at = _dt.fromisoformat(item["collected_at"].replace("Z", "+00:00"))
        for sample in item["samples"]:
            yield (node_id, env, sample["uuid"], sample["inbound_tag"], at,
                   sample["uplink_bytes_total"], sample["downlink_bytes_total"])


ONE_HOUR = timedelta(hours=1)
