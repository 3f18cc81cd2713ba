"""How far a step is through its slice, told as it goes (windows done/total, rate, ETA).

A multi-hour range is one step per asset, and each step works through its
slice in parts (pages, chunks of an hour). Without this, a run's log showed
the step's start and, many minutes later, its end: an operator could not
tell a slow run from a stuck one. The steps report each finished part; the
meter turns that into a line at most every `every_s` seconds, so a long
range logs a few lines a minute and a one-minute run logs none.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from billing_assets.core.timeutil import MINUTE
from billing_assets.pipeline.slices import Slice

EVERY_S = 10.0


class Progress:
    """Parts of one slice as a step finishes them; `advance` is all a step calls."""

    def __init__(
        self,
        step: str,
        work: Slice,
        sink: Callable[[str], None],
        unit: str = "samples",
        every_s: float = EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.step, self.work, self.sink, self.unit, self.every_s, self.clock = step, work, sink, unit, every_s, clock
        self.started = self.last_told = clock()
        self.windows_done = 0
        self.rows = 0

    def advance(self, upto: datetime, rows: int) -> None:
        """Everything of the slice before `upto` is done; the part just finished covered `rows`."""
        self.rows += rows
        done = min(self.work.minutes, max(self.windows_done, int((min(upto, self.work.end) - self.work.start) // MINUTE)))
        self.windows_done = done
        now = self.clock()
        if now - self.last_told >= self.every_s and done < self.work.minutes:
            self.last_told = now
            self.sink(self.line(now))

    def finish(self) -> str:
        """The slice is done: its closing line (how many windows, how fast, how long)."""
        self.windows_done = self.work.minutes
        now = self.clock()
        return f"{self.line(now)} in {_duration(now - self.started, precise=True)}"

    def line(self, now: float | None = None) -> str:
        elapsed = max(1e-9, (self.clock() if now is None else now) - self.started)
        total, done = self.work.minutes, self.windows_done
        text = f"{self.step} {self.work.source_id}: {done}/{total} windows ({100 * done // max(1, total)}%)"
        if self.rows:
            text += f", {self.rows:,} {self.unit} at {self.rows / elapsed:,.0f}/s"
        if 0 < done < total:
            text += f", ETA {_duration(elapsed * (total - done) / done)}"
        return text


def _duration(seconds: float, precise: bool = False) -> str:
    if precise and seconds < 60:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def silent(work: Slice) -> Progress:
    """A meter that tells no one: for callers outside a run (tests, the bench's steps)."""
    return Progress("", work, lambda _line: None, every_s=float("inf"))
