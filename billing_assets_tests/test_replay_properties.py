"""Replay safety as a property: any order of any replays converges to the batch answer.

Hypothesis generates small exporter histories (counter resets, series that
start mid-range, idle users, samples before billing_start, exact and
conflicting re-deliveries, late items, pages split and overlapping at random
points, items out of time order) and a schedule of partition runs (random
range splits in random orders, repeated, re-run after late data shows up).
A scripted exporter serves each history over real HTTPS; runs go through real
Dagster runs or, for most examples, the same pipeline steps called directly.
After one reconcile run over the whole range the database must hold exactly
the oracle's buckets, every bucket's ledger entries must sum to it with a
single charge, and further replays must append nothing.

Examples are isolated by giving each its own source and node id, so one
database and one exporter serve a whole test.
"""

from __future__ import annotations

import itertools
import os
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from billing_assets.defs.runs import materialize_range
from billing_assets.core.pricing import DEFAULT_PRICING
from billing_assets.definitions import defs
from billing_assets.defs.partitions import SOURCES_PARTITION
from billing_assets.pipeline.bucket import bucket_slice
from billing_assets.pipeline.charge import charge_slice
from billing_assets.pipeline.dedup import dedup_slice
from billing_assets.pipeline.fetch import fetch_slice
from billing_assets.pipeline.slices import Slice
from billing_assets.registry.model import Source
from billing_assets.storage.schema import sample_conflicts
from billing_assets.transport.client import RetryPolicy
from billing_assets_tests.support.db import buckets_by_key, ledger_rows
from billing_assets_tests.support.oracle import expected_buckets, expected_sample_counts, ledger_problems, within
from billing_assets_tests.support.scripted_exporter import (
    Script,
    ScriptedItem,
    ScriptedSample,
    ScriptedUpstream,
)

MINUTE = timedelta(minutes=1)
PHASES = 3  # items become visible in phase 0, 1 or 2: later phases are late deliveries
USERS = ("u-alpha", "u-beta", "u-gamma")
TAGS = ("vless-in", "trojan-in")
NO_RETRY = RetryPolicy(attempts=1)

# BILLING_HYPOTHESIS_PROFILE: "dev" (default), "ci" (derandomized, so CI is
# reproducible; it still runs the full example counts) or "thorough" (5x).
PROFILE = os.environ.get("BILLING_HYPOTHESIS_PROFILE", "dev")
SCALE = {"dev": 1.0, "ci": 1.0, "thorough": 5.0}[PROFILE]
settings.register_profile("billing-dev", deadline=None, print_blob=True)
settings.register_profile("billing-ci", deadline=None, print_blob=True, derandomize=True)
settings.register_profile("billing-thorough", deadline=None, print_blob=True)


def property_settings(examples: int) -> settings:
    return settings(
        settings.get_profile(f"billing-{PROFILE}"),
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- histories ---------------------------------------------------------------------------


@dataclass
class History:
    """One source's exporter history, and the truth it implies."""

    source_id: str
    node_id: str
    start: datetime  # first partition minute
    minutes: int
    billing_start: datetime
    items: list[ScriptedItem]
    originals: list[tuple]  # oracle tuples of first deliveries
    conflicts: set[tuple]  # (uuid, tag, collected_at, rejected_up, rejected_down)
    page_sizes: tuple[int, ...] = (100,)
    page_overlap: int = 0
    shuffle_seed: int | None = None

    @property
    def end(self) -> datetime:
        return self.start + self.minutes * MINUTE

    def script(self) -> Script:
        return Script(
            source_id=self.source_id,
            node_id=self.node_id,
            items=list(self.items),
            page_sizes=self.page_sizes,
            page_overlap=self.page_overlap,
            shuffle_seed=self.shuffle_seed,
        )

    def oracle(self) -> dict:
        return within(expected_buckets(self.originals, self.billing_start), self.start, self.end)

    def oracle_counts(self) -> dict:
        return within(expected_sample_counts(self.originals), self.start, self.end)


_ids = itertools.count()


def fresh_ids() -> tuple[str, str]:
    tag = f"{next(_ids)}-{uuid.uuid4().hex[:6]}"
    return f"px-{tag}", f"node-{tag}"


# Steps start at 1 so growth is visible; hypothesis would otherwise favour 0 and
# make a reset indistinguishable from an idle sample.
TOTAL_STEP = st.one_of(st.integers(1, 5_000_000), st.integers(1, 2**40))
RESET_TO_PERCENT = st.integers(1, 99)


@st.composite
def histories(draw, start: datetime, max_minutes: int = 4) -> History:
    minutes = draw(st.integers(1, max_minutes))
    origin = start - MINUTE  # the first partition's fetch overlap reaches one minute back
    span_ms = (minutes + 1) * 60_000
    offsets = sorted(draw(st.sets(st.integers(0, span_ms - 1), min_size=1, max_size=10)))
    times = [origin + timedelta(milliseconds=ms) for ms in offsets]
    series = draw(st.lists(st.tuples(st.sampled_from(USERS), st.sampled_from(TAGS)), min_size=1, max_size=4, unique=True))
    billing_start = draw(st.one_of(st.sampled_from(times), st.integers(0, span_ms).map(lambda ms: origin + timedelta(milliseconds=ms))))
    source_id, node_id = fresh_ids()

    grouped: dict[tuple[datetime, int], list[ScriptedSample]] = {}
    repeats: list[ScriptedItem] = []
    originals: list[tuple] = []
    conflicts: set[tuple] = set()
    for user, tag in series:
        present = draw(st.lists(st.booleans(), min_size=len(times), max_size=len(times)))
        up = down = None
        for at, here in zip(times, present):
            if not here:
                continue
            kind = draw(st.sampled_from(["grow", "grow", "grow", "idle", "reset"]))
            if up is None:  # first sample: counters may already hold bytes from before
                up, down = draw(TOTAL_STEP), draw(TOTAL_STEP)
            elif kind == "grow":
                up, down = up + draw(TOTAL_STEP), down + draw(TOTAL_STEP)
            elif kind == "reset":  # the exporter restarted: totals drop to a fraction of what they were
                up, down = up * draw(RESET_TO_PERCENT) // 100, down * draw(RESET_TO_PERCENT) // 100
            sample = ScriptedSample(user, tag, up, down)
            phase = draw(st.sampled_from([0, 0, 0, 1, 2]))
            grouped.setdefault((at, phase), []).append(sample)
            originals.append((node_id, "test", user, tag, at, up, down))
            again = draw(st.sampled_from([None, None, None, None, "same", "conflict"]))
            if again is None:
                continue
            later = draw(st.integers(phase, PHASES - 1))
            if again == "conflict":
                bump_up, bump_down = draw(st.tuples(st.integers(0, 1000), st.integers(0, 1000)).filter(any))
                repeated = ScriptedSample(user, tag, up + bump_up, down + bump_down)
                conflicts.add((user, tag, at, up + bump_up, down + bump_down))
            else:
                repeated = sample
            repeats.append(ScriptedItem(at, (repeated,), later))
    # Originals first: a re-delivery always reaches the exporter's list after what it repeats.
    items = [ScriptedItem(at, tuple(samples), phase) for (at, phase), samples in sorted(grouped.items())]
    items += repeats
    return History(
        source_id=source_id,
        node_id=node_id,
        start=start,
        minutes=minutes,
        billing_start=billing_start,
        items=items,
        originals=originals,
        conflicts=conflicts,
        page_sizes=tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))),
        page_overlap=draw(st.sampled_from([0, 0, 1, 2])),
        shuffle_seed=draw(st.one_of(st.none(), st.none(), st.integers(0, 2**16))),
    )


@dataclass(frozen=True)
class Run:
    first: int  # minute index, inclusive
    last: int  # minute index, exclusive
    dagster: bool = False


@st.composite
def schedules(draw, minutes: int, dagster_share: float = 0.0) -> list[list[Run]]:
    """Per phase: the ranges run while that phase's items are visible, in run order.

    Each round cuts the range at random points and runs the pieces in a random
    order; pieces may be skipped (a window never collected before reconcile)
    and an extra range may overlap others.
    """
    plan = []
    for _ in range(PHASES):
        runs: list[Run] = []
        for _ in range(draw(st.integers(0, 2))):
            cuts = sorted(draw(st.sets(st.integers(1, max(1, minutes - 1)), max_size=minutes - 1))) if minutes > 1 else []
            pieces = list(zip([0, *cuts], [*cuts, minutes]))
            for first, last in draw(st.permutations(pieces)):
                if draw(st.booleans()) or draw(st.booleans()):
                    runs.append(Run(first, last, draw(st.floats(0, 1)) < dagster_share))
        if draw(st.booleans()):
            first = draw(st.integers(0, minutes - 1))
            last = draw(st.integers(first + 1, minutes))
            runs.append(Run(first, last, draw(st.floats(0, 1)) < dagster_share))
        plan.append(runs)
    return plan


def at_most_one_dagster_run(plan: list[list[Run]]) -> list[list[Run]]:
    """Keep Dagster runs (about a second each, plus the reconcile) to one per example."""
    seen = False
    kept = []
    for runs in plan:
        phase = []
        for run in runs:
            phase.append(Run(run.first, run.last, run.dagster and not seen))
            seen = seen or run.dagster
        kept.append(phase)
    return kept


def fixed_history(start: datetime, seed: int, minutes: int = 8) -> tuple[History, list[list[Run]]]:
    """A larger deterministic scenario (regression case): 6 series, ~50 snapshots, every kind of trouble."""
    rng = random.Random(seed)
    source_id, node_id = fresh_ids()
    origin = start - MINUTE
    times = sorted({origin + timedelta(milliseconds=rng.randrange((minutes + 1) * 60_000)) for _ in range(50)})
    grouped: dict[tuple[datetime, int], list[ScriptedSample]] = {}
    repeats, originals, conflicts = [], [], set()
    for user in USERS:
        for tag in TAGS:
            up = down = None
            joined = rng.randrange(len(times) // 2)  # some series start mid-range
            for at in times[joined:]:
                if rng.random() < 0.3:
                    continue
                roll = rng.random()
                if up is None:
                    up, down = rng.randrange(10**7), rng.randrange(10**7)
                elif roll < 0.1:
                    up, down = rng.randrange(up + 1), rng.randrange(down + 1)  # reset
                elif roll < 0.25 or user == "u-gamma":
                    pass  # idle (u-gamma is always idle after its first sample)
                else:
                    up, down = up + rng.randrange(10**9), down + rng.randrange(10**9)
                phase = rng.choice([0, 0, 0, 1, 2])
                grouped.setdefault((at, phase), []).append(ScriptedSample(user, tag, up, down))
                originals.append((node_id, "test", user, tag, at, up, down))
                roll = rng.random()
                if roll < 0.1:
                    repeats.append(ScriptedItem(at, (ScriptedSample(user, tag, up, down),), rng.randint(phase, PHASES - 1)))
                elif roll < 0.15:
                    repeats.append(ScriptedItem(at, (ScriptedSample(user, tag, up + 1, down),), rng.randint(phase, PHASES - 1)))
                    conflicts.add((user, tag, at, up + 1, down))
    items = [ScriptedItem(at, tuple(samples), phase) for (at, phase), samples in sorted(grouped.items())] + repeats
    history = History(
        source_id, node_id, start, minutes, times[len(times) // 5], items, originals, conflicts,
        page_sizes=(7, 3, 11), page_overlap=2, shuffle_seed=seed if seed % 2 else None,
    )
    plan = []
    for _ in range(PHASES):
        cuts = sorted(rng.sample(range(1, minutes), 3))
        pieces = [Run(a, b) for a, b in zip([0, *cuts], [*cuts, minutes])]
        rng.shuffle(pieces)
        plan.append(pieces + [Run(rng.randrange(minutes // 2), minutes)])
    return history, plan


# -- driving the pipeline ----------------------------------------------------------------


@dataclass
class Harness:
    """One test's database, exporter and Dagster instance, shared by its examples."""

    env: object
    upstream: ScriptedUpstream
    entries: list[dict] = field(default_factory=list)

    def install(self, history: History, dagster: bool) -> Source:
        self.upstream.server.install(history.script())
        entry = self.upstream.registry_entry(history.script(), history.billing_start)
        if dagster:
            self.entries.append(entry)
            self.env.sources_file.write_text(yaml.safe_dump({"sources": self.entries}, sort_keys=False))
            self.env.instance().add_dynamic_partitions(SOURCES_PARTITION, [history.source_id])
        return Source.model_validate(entry)

    def run(self, source: Source, history: History, run: Run) -> None:
        start, end = history.start + run.first * MINUTE, history.start + run.last * MINUTE
        if run.dagster:
            result = materialize_range(defs, self.env.instance(), source.source_id, start, end, log_level="WARNING")
            assert result.success
            return
        engine, work = self.env.engine, Slice(source.source_id, start, end)
        fetch_slice(engine, source, work, retry=NO_RETRY)
        dedup_slice(engine, source, work)
        bucket_slice(engine, source, work)
        charge_slice(engine, source, work, DEFAULT_PRICING)


def stored_conflicts(engine, source_id: str) -> set[tuple]:
    table = sample_conflicts
    with engine.connect() as connection:
        rows = connection.execute(select(table).where(table.c.source_id == source_id)).mappings().all()
    return {(r["uuid"], r["inbound_tag"], r["collected_at"], r["rejected_uplink_bytes_total"], r["rejected_downlink_bytes_total"]) for r in rows}


def check_converged(harness: Harness, history: History, source: Source, plan: list[list[Run]], reconcile_dagster: bool) -> None:
    script = harness.upstream.server.script
    for phase, runs in enumerate(plan):
        script.phase = phase
        for run in runs:
            harness.run(source, history, run)
    script.phase = PHASES - 1
    harness.run(source, history, Run(0, history.minutes, reconcile_dagster))

    engine = harness.env.engine
    buckets = buckets_by_key(engine, source.source_id, with_counts=True)
    expected, counts = history.oracle(), history.oracle_counts()
    assert {key: value[:2] for key, value in buckets.items()} == expected
    assert {key: value[2] for key, value in buckets.items()} == counts
    entries = ledger_rows(engine, source.source_id)
    assert ledger_problems(expected, entries) == []
    assert stored_conflicts(engine, source.source_id) == history.conflicts

    # Replays after convergence, in any order and split, change nothing and append nothing.
    for runs in plan:
        for run in runs:
            harness.run(source, history, Run(run.first, run.last))
    harness.run(source, history, Run(0, history.minutes, False))
    assert buckets_by_key(engine, source.source_id, with_counts=True) == buckets
    assert ledger_rows(engine, source.source_id) == entries


# -- tests ---------------------------------------------------------------------------------


def is_postgres(billing_env) -> bool:
    return billing_env.database_url.startswith("postgresql")


def test_any_replay_order_converges_to_the_batch_answer(billing_env, upstream, recent_hour):
    """Pipeline steps called directly (the assets are thin wrappers around them): many examples."""
    harness = Harness(billing_env, upstream)

    @property_settings(15 if is_postgres(billing_env) else 40)
    @given(data=st.data())
    def replay(data):
        history = data.draw(histories(recent_hour))
        plan = data.draw(schedules(history.minutes))
        source = harness.install(history, dagster=False)
        check_converged(harness, history, source, plan, reconcile_dagster=False)

    replay()


def test_dagster_runs_in_random_orders_converge(billing_env, upstream, recent_hour):
    """The same property through real Dagster runs (single-run ranges), fewer examples."""
    harness = Harness(billing_env, upstream)

    @property_settings(4 if is_postgres(billing_env) else 6)
    @given(data=st.data())
    def replay(data):
        history = data.draw(histories(recent_hour, max_minutes=3))
        plan = at_most_one_dagster_run(data.draw(schedules(history.minutes, dagster_share=0.3)))
        source = harness.install(history, dagster=True)
        try:
            check_converged(harness, history, source, plan, reconcile_dagster=True)
        finally:
            billing_env.instance().delete_dynamic_partition(SOURCES_PARTITION, history.source_id)
            harness.entries.clear()

    replay()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fixed_larger_scenarios_converge(billing_env, upstream, recent_hour, seed):
    """Regression cases: bigger than hypothesis examples, same property, deterministic."""
    harness = Harness(billing_env, upstream)
    history, plan = fixed_history(recent_hour, seed)
    assert history.conflicts and any(item.visible_from for item in history.items)
    source = harness.install(history, dagster=False)
    check_converged(harness, history, source, plan, reconcile_dagster=False)
