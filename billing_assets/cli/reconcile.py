"""`billing reconcile`: submit a (source, range) backfill the Dagster UI shows.

The backfill daemon (part of `dagster dev` / `dagster-daemon run`) launches it
as one run per contiguous range; `--wait` is for scripts that want to block.
"""

from __future__ import annotations

import sys
import time


def run_reconcile(
    source_ids: list[str] | None,
    since: str,
    until: str,
    wait: bool = False,
    timeout_s: float = 3600,
    all_sources: bool = False,
) -> int:
    """One backfill per source; every source is checked, and every backfill built, before the first is submitted.

    Exit 2: nothing submitted (a source or the range is wrong). Exit 1 after a
    failure mid-submission: stderr lists what was submitted and what not, and
    the command that submits the rest.
    """
    # Only what reconcile needs: not billing_assets.definitions (the downstream
    # reports pull pandas in), which costs about a second before anything is done.
    from billing_assets.core.timeutil import format_rfc3339
    from billing_assets.defs.automation.reconcile import (
        ReconcileError,
        SubmissionFailed,
        reconcile_backfill,
        reconcile_window,
        require_registered,
        submit_backfills,
    )
    from billing_assets.cli.instance import InstanceError, dagster_instance
    from billing_assets.defs.resources import BillingStore
    from billing_assets.registry.model import RegistryError

    try:
        begin, finish = _moment("--since", since), _moment("--until", until)
        if begin >= finish:
            raise ReconcileError(f"--since {format_rfc3339(begin)} is not before --until {format_rfc3339(finish)}")
        registry = BillingStore().registry()
        if all_sources:
            sources = [source for source in registry.enabled if source.mode != "legacy_latest"]
        else:
            sources = [registry.get(source_id) for source_id in dict.fromkeys(source_ids or [])]
        windows = {}
        for source in sources:
            try:
                windows[source.source_id] = reconcile_window(source, begin, finish)
            except ReconcileError as error:
                if len(sources) == 1:
                    raise
                print(f"skipped: {error}", file=sys.stderr)
        if not windows:
            raise ReconcileError("no source has anything to reconcile in that range")
        instance = dagster_instance()
        known = require_registered(instance, list(windows))
        try:
            built = {source_id: reconcile_backfill(known, source_id, start, end) for source_id, (start, end) in windows.items()}
        except Exception as error:  # noqa: BLE001 - Dagster refused a range: nothing is submitted
            raise ReconcileError(f"could not build the backfills, none submitted: {type(error).__name__}: {error}") from error
    except (RegistryError, ReconcileError, InstanceError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    def announce(source_id: str, backfill_id: str) -> None:
        start, end = windows[source_id]
        print(f"backfill {backfill_id}: reconcile {source_id} [{format_rfc3339(start)}, {format_rfc3339(end)})")

    try:
        backfills = submit_backfills(instance, built)
    except SubmissionFailed as failure:
        for source_id, backfill_id in failure.submitted.items():
            announce(source_id, backfill_id)
        print(f"error: {failure}", file=sys.stderr)
        for source_id, message in failure.errors.items():
            print(f"  failed: {source_id}: {message}", file=sys.stderr)
        submitted = ", ".join(f"{source_id} ({backfill_id})" for source_id, backfill_id in failure.submitted.items())
        print(f"  submitted ({len(failure.submitted)}): {submitted or '-'}", file=sys.stderr)
        print(f"  not submitted ({len(failure.not_submitted)}): {', '.join(failure.not_submitted) or '-'}", file=sys.stderr)
        if failure.unknown:
            unknown = ", ".join(f"{source_id} (check backfill {backfill_id})" for source_id, backfill_id in failure.unknown.items())
            print(f"  unknown, the storage could not be asked ({len(failure.unknown)}): {unknown}", file=sys.stderr)
        if failure.not_submitted:
            again = " ".join(f"--source {source_id}" for source_id in failure.not_submitted)
            print(f"  to submit the rest: billing reconcile {again} --since {since} --until {until}", file=sys.stderr)
        return 1
    for source_id, backfill_id in backfills.items():
        announce(source_id, backfill_id)
    if not wait:
        print("the backfill daemon launches them; watch them under Overview > Backfills in the Dagster UI")
        return 0
    return _wait_for(instance, backfills, timeout_s)


def _moment(flag: str, text: str):
    """An RFC3339 instant with a zone, or a ValueError that names the flag."""
    from datetime import datetime, timezone

    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{flag} {text!r} is not an RFC3339 time such as 2026-11-21T10:00:00Z") from None
    if value.tzinfo is None:
        raise ValueError(f"{flag} {text!r} has no time zone; add Z (UTC) or an offset such as +01:00")
    return value.astimezone(timezone.utc)


PROGRESS_EVERY_S = 15


def _wait_for(instance, backfills: dict[str, str], timeout_s: float) -> int:
    """Block until every backfill ends, printing what is still running every PROGRESS_EVERY_S."""
    pending, failed = set(backfills.values()), False
    started = time.monotonic()
    deadline, next_report = started + timeout_s, started + PROGRESS_EVERY_S
    while pending and time.monotonic() < deadline:
        if time.monotonic() >= next_report:
            states = ", ".join(f"{b} {instance.get_backfill(b).status.value.lower()}" for b in sorted(pending))
            print(f"waiting {time.monotonic() - started:.0f}s: {len(pending)} of {len(backfills)} backfills open ({states})", flush=True)
            next_report += PROGRESS_EVERY_S
        for backfill_id in sorted(pending):
            status = instance.get_backfill(backfill_id).status
            if status.value.startswith("COMPLETED") or status.value in ("FAILED", "CANCELED"):
                print(f"backfill {backfill_id}: {status.value}")
                failed |= status.value != "COMPLETED_SUCCESS"
                pending.discard(backfill_id)
        if pending:
            time.sleep(2)
    if pending:
        print(f"backfill(s) {', '.join(sorted(pending))}: still running after {timeout_s:.0f}s", file=sys.stderr)
        return 1
    return 1 if failed else 0
