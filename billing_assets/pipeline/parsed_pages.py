"""The pages a fetch just validated, held in memory for the dedup step of the same run worker.

A run's steps run one after another in one process (`in_process_executor`),
so dedup usually reads pages this process downloaded and validated moments
before. Reading a kept body back, decompressing it, checking its sha256 and
validating it again cost ~0.4 s of a source-hour's ~0.6 s of dedup CPU
(bench/RESULTS.md, round 13). A page is held by the sha256 of its body as
received, which is the key dedup finds next to each kept body: it is reused
only for exactly the bytes dedup would otherwise re-read and re-validate with
the same model, so both roads give the same deliveries. Anything not held
(another process, a later replay, a page past the bound or expired, a
recorded sha256 that no longer matches) reads the kept body as before, and a damaged kept body still
fails there; a body damaged in the store between the two steps of one run is
billed as it was received and fails the next read.

Bounded: at most `MAX_HELD_SAMPLES` samples (~24 bytes each), first come
first held, so a long range's first pages (the ones its dedup reads first);
dedup takes each page out as it reads it, and a page nobody took within
`HOLD_SECONDS` is dropped.
"""

from __future__ import annotations

import threading
import time

from billing_assets.core.dedup import PageColumns, page_columns
from billing_assets.storage.times import epoch_micros_of
from billing_assets.transport.envelope import WindowPage

MAX_HELD_SAMPLES = 2_000_000  # ~50 MB; a source-hour of 1,000 users is ~350 k
HOLD_SECONDS = 900.0  # a page no dedup took by then belongs to a run that stopped before its dedup

_lock = threading.Lock()
_held: dict[str, tuple[float, PageColumns]] = {}  # sha256 -> (when held, page), in the order held
_held_samples = 0


def columns_of(page: WindowPage) -> PageColumns:
    """A validated page as dedup reads it, whichever road it came by."""
    return page_columns(page.node_id, page.env, ((epoch_micros_of(item.collected_at), item.samples) for item in page.items))


def room(samples: int, already: int) -> bool:
    """Whether a fetch that will hold `already` samples may hold `samples` more, besides what is held."""
    with _lock:
        _expire(time.monotonic())
        return _held_samples + already + samples <= MAX_HELD_SAMPLES


def hold(pages: list[tuple[str, PageColumns]]) -> None:
    """Hold one fetch's validated pages (sha256 of each body as received, its columns), in page order.

    First come, first held: the slices of a long range are all fetched
    before the first is deduplicated, and dedup reads them in order, so the
    first pages are the ones worth holding. A page is never evicted for a
    newer one; one left by a run that stopped before its dedup expires.
    """
    global _held_samples
    with _lock:
        now = time.monotonic()
        _expire(now)
        for sha256, page in pages:
            if _held_samples + page.samples > MAX_HELD_SAMPLES:
                break
            previous = _held.pop(sha256, None)
            _held_samples += page.samples - (previous[1].samples if previous else 0)
            _held[sha256] = (now, page)


def _expire(now: float) -> None:
    global _held_samples
    for sha256, (since, page) in list(_held.items()):
        if now - since < HOLD_SECONDS:
            break  # held in order: the rest are younger
        del _held[sha256]
        _held_samples -= page.samples


def take(sha256: str | None) -> PageColumns | None:
    """The held page of this body, removed from the hold; None if this process holds none."""
    global _held_samples
    if sha256 is None:
        return None
    with _lock:
        entry = _held.pop(sha256, None)
        if entry is None:
            return None
        _held_samples -= entry[1].samples
        return entry[1]


def held() -> tuple[int, int]:
    """(pages, samples) held now."""
    with _lock:
        return len(_held), _held_samples


def clear() -> None:
    """Drop everything held: what a dedup in a fresh process would see."""
    global _held_samples
    with _lock:
        _held.clear()
        _held_samples = 0
