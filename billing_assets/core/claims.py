"""Which fetch's pages speak for which part of a dedup range (pure interval arithmetic).

A range may have been fetched more than once: its own slice's fetch, the
next window's fetch whose overlap reaches back into it, a replay. Every
instant of the range is read from exactly one fetch, so a delivery is never
counted twice by reading two fetches of the same minute:

- the newest fetch that covers the whole range speaks for all of it (the
  common case: the slice's own fetch, one read of its pages);
- otherwise each instant is read from the newest fetch that covers it;
- what no kept page covers is left to the staged rows (`legacy_latest`
  pulls, and fetches from before pages were kept, migration 0012).

Reading the slice's own fetch rather than a newer overlap re-read loses
nothing: that re-read's deliveries of the overlap are read by the next
window's dedup, whose range they belong to as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

Interval = tuple[datetime, datetime]


@dataclass(frozen=True)
class Fetch:
    fetch_id: str
    since: datetime
    until: datetime
    order: int  # larger is newer (the id of its last page)


def claim(since: datetime, until: datetime, fetches: list[Fetch]) -> tuple[list[tuple[str, list[Interval]]], list[Interval]]:
    """([(fetch_id, the intervals it speaks for)], the intervals no fetch covers), all within [since, until)."""
    newest_first = sorted(fetches, key=lambda fetch: fetch.order, reverse=True)
    for fetch in newest_first:
        if fetch.since <= since and fetch.until >= until:
            return [(fetch.fetch_id, [(since, until)])], []
    open_: list[Interval] = [(since, until)] if since < until else []
    claims: list[tuple[str, list[Interval]]] = []
    for fetch in newest_first:
        taken: list[Interval] = []
        rest: list[Interval] = []
        for start, end in open_:
            low, high = max(start, fetch.since), min(end, fetch.until)
            if low >= high:
                rest.append((start, end))
                continue
            taken.append((low, high))
            if start < low:
                rest.append((start, low))
            if high < end:
                rest.append((high, end))
        if taken:
            claims.append((fetch.fetch_id, sorted(taken)))
        open_ = sorted(rest)
    return claims, open_


