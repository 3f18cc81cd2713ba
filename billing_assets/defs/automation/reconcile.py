"""Reconcile: re-materialize a trailing range of each source to absorb late data.

Reconcile is a partition backfill: the schedule launches, per enabled source,
one range run over the trailing horizon (what a single-run backfill launches),
and `billing reconcile` submits a real backfill an operator can watch in the UI.
Either way the steps are the normal ones: samples already seen are no-ops,
buckets converge to the batch answer, and the ledger appends corrections only
where a bucket's value changed.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import dagster as dg

from billing_assets.core.timeutil import MINUTE, ceil_minute, floor_minute, format_rfc3339
from billing_assets.defs.automation import clock
from billing_assets.defs.runs import BILLING_ASSETS, range_request, source_tags
from billing_assets.defs.dagster_internals import asset_backfill, hold_instance_connections, known_dynamic_partitions
from billing_assets.settings import Settings
from billing_assets.defs.partitions import SOURCES_PARTITION, billing_partitions, earliest_window, partition_key
from billing_assets.defs.resources import BillingStore
from billing_assets.registry.model import RegistryError, Source


class ReconcileError(ValueError):
    """The requested reconcile cannot be submitted; the message says why."""


def reconcile_window(source: Source, since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """[since, until) as whole minutes, clipped to what this source may bill and the partitions hold."""
    start = max(floor_minute(since), floor_minute(source.billing_start), ceil_minute(earliest_window()))
    end = floor_minute(until)
    if end <= start:
        raise ReconcileError(
            f"nothing to reconcile for {source.source_id!r}: the range ends at {format_rfc3339(end)}, "
            f"but it can bill only from {format_rfc3339(start)} (its billing_start, the dedup horizon and whole minutes)"
        )
    return start, end


def require_registered(instance: dg.DagsterInstance, source_ids: list[str]):
    """Every source must be a partition already: checked for all before anything is submitted.

    Returns what it read (one query for all), for `reconcile_backfill` to build
    the backfills from without asking the instance again per source and asset.
    """
    known = known_dynamic_partitions(instance, SOURCES_PARTITION, source_ids)
    missing = [source_id for source_id in source_ids if not known.has_dynamic_partition(SOURCES_PARTITION, source_id)]
    if missing:
        raise ReconcileError(
            f"source(s) {', '.join(map(repr, missing))} not a registered partition; run `billing sources sync` first"
        )
    return known


def reconcile_backfill(known, source_id: str, start: datetime, end: datetime):
    """The asset backfill of the four billing assets over [start, end) of one source, built, not yet submitted.

    `known`: what `require_registered` returned for a batch holding this source.
    """
    return asset_backfill(
        known, billing_partitions, uuid.uuid4().hex[:8], partition_key(start, source_id), partition_key(end - MINUTE, source_id),
        BILLING_ASSETS, source_tags(source_id, "reconcile"),
        title=f"reconcile {source_id} [{format_rfc3339(start)}, {format_rfc3339(end)})",
        description="billing reconcile: re-materialize a range; the ledger changes only by corrections",
    )  # fmt: skip


def submit_reconcile_backfill(
    instance: dg.DagsterInstance,
    defs: dg.Definitions | None,
    source_id: str,
    start: datetime,
    end: datetime,
    checked: bool = False,
) -> str:
    """Adds an asset backfill of the four billing assets over [start, end) of one source; returns its id.

    The assets' BackfillPolicy.single_run() makes the backfill daemon launch it
    as one run per contiguous range, tagged like a collection run. `checked`
    is accepted for older callers and no longer skips anything: the source is
    looked up once either way. `defs`, when given, must declare the billing
    assets on `billing_partitions` (the backfill is built from it, not from
    the definitions, so that `billing reconcile` need not load them).
    """
    if defs is not None:
        require_billing_partitions(defs)
    backfill = reconcile_backfill(require_registered(instance, [source_id]), source_id, start, end)
    instance.add_backfill(backfill)
    return backfill.backfill_id


def require_billing_partitions(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    other = [name for name in BILLING_ASSETS if graph.get(dg.AssetKey(name)).partitions_def != billing_partitions]
    if other:
        raise ReconcileError(f"asset(s) {', '.join(other)} are not partitioned by billing_partitions in these definitions")


# How many backfills are added at once on PostgreSQL instance storage: each add
# is a few round trips (Dagster reflects the table's columns on every call), so
# a few connections in parallel cut the wall time; more would only queue on a
# shared 2-core host. SQLite instance storage adds them one at a time: one
# writer per file, a second one would wait on (or fail at) its lock.
SUBMIT_WORKERS = 4


class SubmissionFailed(RuntimeError):
    """Some backfills were submitted and some not; exactly which, so the rest can be submitted again."""

    def __init__(self, submitted: dict[str, str], not_submitted: list[str], unknown: dict[str, str], errors: dict[str, str]):
        self.submitted, self.not_submitted, self.unknown, self.errors = submitted, not_submitted, unknown, errors
        first = next(iter(errors.items()))
        super().__init__(
            f"submitting the reconcile backfills failed ({first[0]}: {first[1]}): "
            f"{len(submitted)} submitted, {len(not_submitted)} not submitted"
            + (f", {len(unknown)} unknown" if unknown else "")
        )


def parallel_submit_safe(instance: dg.DagsterInstance) -> bool:
    """True for PostgreSQL run storage, where concurrent writers are safe; anything else is written sequentially."""
    try:
        from dagster_postgres import PostgresRunStorage
    except ImportError:
        return False
    return isinstance(instance.run_storage, PostgresRunStorage)


def submit_backfills(instance: dg.DagsterInstance, backfills: dict[str, object], workers: int | None = None) -> dict[str, str]:
    """Adds every backfill (source_id -> built backfill); returns source_id -> backfill id.

    On PostgreSQL instance storage SUBMIT_WORKERS at a time, each on its own
    pooled connection (`hold_instance_connections`, for good: pass an
    instance of the caller's own); elsewhere one at a time (`workers`
    overrides). The first failure stops what has not started yet; the ones
    in flight finish. Raises SubmissionFailed naming what was submitted and
    what not: a backfill whose add failed is looked up, since the error may
    have come after its row was written (then it counts as submitted; if the
    look-up fails too, as unknown, with its id to check).
    """
    import threading

    if workers is None:
        workers = SUBMIT_WORKERS if parallel_submit_safe(instance) else 1
    workers = max(1, min(workers, len(backfills)))
    if workers > 1:
        # dagster-postgres opens a new connection per statement (NullPool); a small pool
        # (1 + 4 overflow) lets each worker reuse its own instead.
        hold_instance_connections(instance)
    stop = threading.Event()
    outcome: dict[str, BaseException | bool] = {}

    def add(source_id: str, backfill) -> None:
        if stop.is_set():
            outcome[source_id] = False
            return
        try:
            instance.add_backfill(backfill)
            outcome[source_id] = True
        except Exception as error:  # noqa: BLE001 - any failure stops the rest and is reported by source
            outcome[source_id] = error
            stop.set()

    if workers == 1:
        for source_id, backfill in backfills.items():
            add(source_id, backfill)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile-submit") as pool:
            for source_id, backfill in backfills.items():
                pool.submit(add, source_id, backfill)
    ids = {source_id: backfill.backfill_id for source_id, backfill in backfills.items()}
    if not stop.is_set():
        return ids
    submitted = {source_id: ids[source_id] for source_id in backfills if outcome.get(source_id) is True}
    not_submitted = [source_id for source_id in backfills if outcome.get(source_id) is False]
    unknown, errors = {}, {}
    for source_id in backfills:
        error = outcome.get(source_id)
        if not isinstance(error, BaseException):
            continue
        errors[source_id] = f"{type(error).__name__}: {error}"
        try:
            landed = instance.get_backfill(ids[source_id]) is not None
        except Exception:  # noqa: BLE001 - storage unreachable: say so rather than guess
            unknown[source_id] = ids[source_id]
            continue
        if landed:
            submitted[source_id] = ids[source_id]
        else:
            not_submitted.append(source_id)
    order = list(backfills)
    raise SubmissionFailed(
        {source_id: submitted[source_id] for source_id in order if source_id in submitted},
        [source_id for source_id in order if source_id in not_submitted],
        unknown,
        errors,
    )


@dg.schedule(
    cron_schedule="*/30 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    target=dg.AssetSelection.assets(*BILLING_ASSETS),
)
def reconcile_schedule(context: dg.ScheduleEvaluationContext, billing: BillingStore):
    """Every 30 minutes, one range run per enabled source over the trailing horizon."""
    try:
        registry = billing.registry()
    except RegistryError as error:
        return dg.SkipReason(f"registry not loaded: {error}")
    settings = Settings.from_env()
    until = clock.now() - settings.collect_lag
    registered = set(context.instance.get_dynamic_partitions(SOURCES_PARTITION))
    requests = []
    for source in registry.enabled:
        if source.source_id not in registered or source.mode == "legacy_latest":
            continue
        try:
            start, end = reconcile_window(source, until - settings.reconcile_horizon, until)
        except ReconcileError:
            continue
        requests.append(range_request(source.source_id, start, end, "reconcile"))
    return requests or dg.SkipReason("no enabled source to reconcile")
