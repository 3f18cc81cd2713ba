"""The pages a fetch just validated, held in memory for the dedup step of the same run worker.

A run's steps run one after another in one process (`in_process_executor`),
so dedup usually reads pages this process downloaded and validated moments
before. Reading a kept body back, decompressing it, checking its sha256 and
validating it again cost ~0.3 s of a source-hour's ~0.6 s of dedup CPU
(bench.steps, round 13). A page is held by the sha256 of its body as
received, which is the key dedup finds next to each kept body: it is reused
only for exactly the bytes dedup would otherwise re-read and re-validate with
the same model, so both roads give the same deliveries. Anything not held
(another process, a later replay, an evicted page, a recorded sha256 that no
longer matches) reads the kept body as before, and a damaged kept body still
fails there; a body damaged in the store between the two steps of one run is
billed as it was received and fails the next read.

Bounded: one fetch at a time (the newest), at most `MAX_HELD_SAMPLES` samples
of it (~24 bytes each; its first pages, the ones dedup reads first); dedup
takes each page out as it reads it.
"""

from __future__ import annotations

import threading

from billing_assets.core.dedup import PageColumns, page_columns
from billing_assets.storage.times import epoch_micros_of
from billing_assets.transport.envelope import WindowPage

MAX_HELD_SAMPLES = 2_000_000  # ~50 MB; a source-hour of 1,000 users is ~350 k

_lock = threading.Lock()
_held: dict[str, PageColumns] = {}
_held_samples = 0


def columns_of(page: WindowPage) -> PageColumns:
    """A validated page as dedup reads it, whichever road it came by."""
    return page_columns(page.node_id, page.env, ((epoch_micros_of(item.collected_at), item.samples) for item in page.items))


def room(samples: int, already: int) -> bool:
    """Whether a fetch that has `already` samples to hold may hold `samples` more."""
    return already + samples <= MAX_HELD_SAMPLES


def hold_fetch(pages: list[tuple[str, PageColumns]]) -> None:
    """Hold one fetch's validated pages (sha256 of each body as received, its columns) in place of any held before.

    Dedup follows its own fetch, so only the newest fetch is worth holding;
    an older one whose dedup never ran would only take the room.
    """
    global _held_samples
    with _lock:
        _held.clear()
        _held_samples = 0
        for sha256, page in pages:
            if not room(page.samples, _held_samples):
                break
            _held[sha256] = page
            _held_samples += page.samples


def take(sha256: str | None) -> PageColumns | None:
    """The held page of this body, removed from the hold; None if this process holds none."""
    global _held_samples
    if sha256 is None:
        return None
    with _lock:
        page = _held.pop(sha256, None)
        if page is not None:
            _held_samples -= page.samples
        return page


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
