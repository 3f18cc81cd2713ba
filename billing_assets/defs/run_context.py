"""What every billing asset does around its step: resolve slices and sources,
turn failures into clear Dagster failures, and summarise metadata cheaply.

A step's metadata is a handful of numbers per run, whatever the range
length. The partitioned checks are the exception, on purpose: each reports
one evaluation per (minute, source) key so the UI can show every window green
or red (`partition_evaluations`), and Dagster writes each as its own event.
That is one event per key per check; on PostgreSQL instance storage each
used to open its own connection, so every step first makes the instance hold
one connection per storage (`hold_instance_connections`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

import warnings

import dagster as dg

from billing_assets.core.timeutil import format_rfc3339, now_utc
from billing_assets.defs.dagster_internals import hold_instance_connections, latest_materialization_targets
from billing_assets.defs.partitions import billing_partitions, key_parts, run_slices
from billing_assets.defs.resources import BillingStore
from billing_assets.defs.runs import SOURCE_TAG
from billing_assets.pipeline import progress as progress_meter
from billing_assets.pipeline.slices import Slice
from billing_assets.registry.credentials import CredentialError
from billing_assets.registry.model import RegistryError, Source
from billing_assets.storage import checkpoints
from billing_assets.transport.errors import SourceFetchError

EXPECTED_ERRORS = (SourceFetchError, RegistryError, CredentialError)


def run_each_slice(
    context: dg.AssetExecutionContext, store: BillingStore, step: Callable[[Source, Slice, progress_meter.Progress], Any]
) -> list[tuple[Slice, Any]]:
    """Run `step` over the run's slices; every failure ends up in the source's checkpoint.

    `billing status` and the collection sensor read `last_error`: a failure
    that is only in the run log (a database refusing a value, a disk full in
    the bucket step) would leave the source looking healthy.
    """
    hold_instance_connections(context.instance)
    slices = run_slices(context)
    _tag_source(context, slices)
    step_name = context.asset_key.to_user_string()
    try:
        registry = store.registry()
        results = []
        for work in slices:
            source = registry.get(work.source_id)
            context.log.info(
                f"{work.source_id}: [{format_rfc3339(work.start)}, {format_rfc3339(work.end)}) ({work.minutes} min)"
            )
            try:
                meter = progress_meter.Progress(step_name, work, context.log.info, every_s=progress_meter.EVERY_S)
                results.append((work, step(source, work, meter)))
                context.log.info(meter.finish())
            except EXPECTED_ERRORS:
                raise
            except Exception as error:
                reason = f"source {work.source_id!r}: {step_name} failed for {_span(work)}: {describe_unexpected(error)}"
                _record_failure(store, work.source_id, reason)
                raise dg.Failure(description=reason) from error
        return results
    except EXPECTED_ERRORS as error:
        if isinstance(error, RegistryError):
            _record_registry_failure(store, slices, error)
        elif not isinstance(error, SourceFetchError):  # fetch records its own failures, in its own words
            _record_failure(store, getattr(error, "source_id", None) or slices[0].source_id, str(error))
        raise dg.Failure(description=str(error), allow_retries=False) from None


_TAGGED_RUNS: set[str] = set()


def _tag_source(context: dg.AssetExecutionContext, slices: list[Slice]) -> None:
    """Give a run of one source its `billing/source` tag if whoever launched it did not.

    Queued runs get it from the run coordinator before they wait in the
    queue; runs executed on the spot (`dagster asset materialize`,
    `dg launch`) pass no coordinator. Tagged while running, they are still
    seen by the collection sensor's in-flight check, which then leaves that
    source alone until they end.
    """
    sources = {work.source_id for work in slices}
    run_id = context.run.run_id
    # `context.run` is the run as it was when it started: remember the tag added by this run's first step.
    if len(sources) == 1 and SOURCE_TAG not in context.run.tags and run_id not in _TAGGED_RUNS:
        context.instance.add_run_tags(run_id, {SOURCE_TAG: sources.pop()})
        _TAGGED_RUNS.add(run_id)


def _span(work: Slice) -> str:
    return f"[{format_rfc3339(work.start)}, {format_rfc3339(work.end)})"


def describe_unexpected(error: BaseException) -> str:
    """One line for an error nobody planned for: its type and first line, never the SQL or its parameters."""
    first = (str(error).strip().splitlines() or [""])[0][:300]
    original = getattr(error, "orig", None)  # SQLAlchemy wraps the driver's error
    if original is not None:
        first = (str(original).strip().splitlines() or [""])[0][:300]
        return f"{type(original).__name__}: {first}"
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _record_failure(store: BillingStore, source_id: str, reason: str) -> None:
    """Best effort: when the database itself is what failed, the run's failure still stands."""
    try:
        with store.engine().begin() as connection:
            checkpoints.record_failure(connection, source_id, reason, now_utc())
    except Exception:  # noqa: BLE001 - the original failure is what the operator must see
        pass


def _record_registry_failure(store: BillingStore, slices: list[Slice], error: RegistryError) -> None:
    """An unusable registry stops these sources' collection: say so where `billing status` looks."""
    now = now_utc()
    with store.engine().begin() as connection:
        for source_id in sorted({work.source_id for work in slices}):
            checkpoints.record_failure(connection, source_id, f"source {source_id!r}: not collected, registry problem: {error}", now)


def summed(results: list[tuple[Slice, Any]], *fields: str) -> dict[str, int]:
    return {field: int(sum(getattr(stats, field) for _, stats in results)) for field in fields}


def partitioned_check(asset: str, description: str):
    """An asset check partitioned like the billing assets.

    A range run then evaluates only the range's windows; an unpartitioned check
    on a partitioned asset would make Dagster enumerate every partition.
    """

    def decorate(fn):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.PreviewWarning)  # partitioned checks are "preview" in 1.13
            return dg.asset_check(
                asset=asset, partitions_def=billing_partitions, blocking=False, description=description
            )(fn)

    return decorate


# A partitioned check's verdict on one window: (passed, metadata, description).
Verdict = tuple[bool, Mapping[str, Any], str]


def check_windows(context: dg.AssetCheckExecutionContext) -> dict[str, tuple[str, datetime]]:
    """The check's (minute, source) keys as `minute|source` strings, each with its (source, minute).

    Refuses windows beyond the dedup horizon exactly as the steps do (`run_slices`).
    """
    run_slices(context)
    return {str(key): key_parts(key) for key in context.partition_keys}


def windows_span(windows: Mapping[str, tuple[str, datetime]]) -> tuple[list[str], datetime, datetime]:
    """(sources, start, end) covering every window: the bounds of the one grouped query a check makes."""
    minutes = [minute for _, minute in windows.values()]
    return sorted({source for source, _ in windows.values()}), min(minutes), max(minutes) + timedelta(minutes=1)


def partition_evaluations(
    context: dg.AssetCheckExecutionContext,
    verdicts: Mapping[str, Verdict],
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
) -> Iterator[dg.AssetCheckEvaluation | dg.Output]:
    """One evaluation per (minute, source) key, then the check's (empty) output.

    `AssetCheckResult` of a range run lands on no partition (`partition: null`),
    so the UI showed every window Missing and a conflict could never turn its
    own window red (docs/ui.md, research note 1). Each evaluation names its
    key and the key's latest materialization, which is what makes the UI count
    it; those come from one instance query for the whole range. Dagster
    writes each evaluation as its own event (they are not batched), so the
    metadata per key is kept to a few numbers; the callers' figures come from
    one grouped SQL query, never one per key. `Output(None)` is required: the
    check's output is not optional.
    """
    spec = context.check_specs[0]
    targets = latest_materialization_targets(context.instance, spec.asset_key, list(verdicts))
    failed = [key for key, (passed, _, _) in verdicts.items() if not passed]
    context.log.info(
        f"{spec.name}: {len(verdicts)} windows, {len(failed)} failed" + (f" (first: {failed[0]})" if failed else "")
    )
    for key, (passed, metadata, description) in verdicts.items():
        yield dg.AssetCheckEvaluation(
            asset_key=spec.asset_key,
            check_name=spec.name,
            partition=key,
            passed=passed,
            severity=severity,
            blocking=False,
            metadata=dict(metadata),
            description=description,
            target_materialization_data=targets.get(key),
        )
    yield dg.Output(None)
