"""`billing remittance …`: what left the system, what did not and why, and the levers.

`status` answers SWATCH's "what did we remit and what not" per target and
account, and per hour remitted vs ledger; it exits 1 on a dead letter or a
mismatch so a probe can alert. `retry --dead-letter`, `reset` and
`recalculate` change only remittance bookkeeping (never the ledger) and
re-send with the same tracking ids, so the target's dedup makes them safe to
repeat. Errors name the flag.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone

from billing_assets.core.timeutil import MINUTE_KEY_FORMAT, format_rfc3339

HOUR = timedelta(hours=1)


class FlagError(ValueError):
    pass


def parse_hour(flag: str, value: str) -> datetime:
    """An hour as RFC3339 (`2026-11-22T10:00:00Z`) or a partition key (`2026-11-22-10:00`); must be on the hour."""
    text = value.strip()
    try:
        if "T" in text:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                raise FlagError(f"{flag} {value!r}: give a UTC offset (e.g. Z)")
        else:
            moment = datetime.strptime(text, MINUTE_KEY_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError as error:
        if isinstance(error, FlagError):
            raise
        raise FlagError(f"{flag} {value!r}: expected RFC3339 like 2026-11-22T10:00:00Z or a key like 2026-11-22-10:00") from None
    moment = moment.astimezone(timezone.utc)
    if (moment.minute, moment.second, moment.microsecond) != (0, 0, 0):
        raise FlagError(f"{flag} {value!r}: must be on the hour")
    return moment


def parse_range(since: str, until: str, until_flag: str = "--until") -> tuple[datetime, datetime]:
    start, end = parse_hour("--since", since), parse_hour(until_flag, until)
    if end <= start:
        raise FlagError(f"{until_flag} must be after --since")
    return start, end


def _store():
    from billing_assets.defs.resources import BillingStore

    return BillingStore()


def _fail(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 2


def run_status(since: str | None, until: str | None, as_json: bool) -> int:
    from billing_assets.defs.automation import clock
    from billing_assets.storage import downstream as store

    now = clock.now()
    try:
        start, end = parse_range(since, until) if since or until else (None, None)
    except FlagError as error:
        return _fail(error)
    if start is None:
        end = now.replace(minute=0, second=0, microsecond=0) + HOUR
        start = end - 48 * HOUR
    with _store().read_engine().connect() as connection:
        books = store.books(connection, start, end)
        hours = store.hours_report(connection, start, end)
    problems = []
    for row in books:
        outstanding = row["pending"] + row["retryable"] + row["failed"]
        row["books_balance"] = row["sent"] + outstanding + row["carried"] == row["accounted"]
        if row["failed_records"]:
            problems.append(f"{row['target']}/{row['account_id']}/{row['metric']}: {row['failed_records']} dead letter(s)")
        if not row["books_balance"]:
            problems.append(f"{row['target']}/{row['account_id']}/{row['metric']}: sent+outstanding+carried != accounted")
    for hour in hours:
        hour["mismatch"] = bool(hour["remitted_at"]) and hour["derived"] != hour["ledger"]
        if hour["mismatch"]:
            problems.append(f"{format_rfc3339(hour['hour'])}: ledger {hour['ledger']} but remitted from {hour['derived']} (re-derive pending)")
    if as_json:
        def plain(value):
            return format_rfc3339(value) if isinstance(value, datetime) else value

        print(json.dumps({
            "since": format_rfc3339(start), "until": format_rfc3339(end), "problems": problems,
            "books": books, "hours": [{k: plain(v) for k, v in h.items()} for h in hours],
        }, indent=2))
    else:
        print(f"{'target':<10} {'account':<12} {'metric':<15} {'sent':>14} {'pending':>10} {'retryable':>10} {'dead':>10} {'carried':>10}  books")
        for row in books:
            print(
                f"{row['target']:<10} {row['account_id']:<12} {row['metric']:<15} {row['sent']:>14} {row['pending']:>10} "
                f"{row['retryable']:>10} {row['failed']:>10} {row['carried']:>10}  {'ok' if row['books_balance'] else 'MISMATCH'}"
            )
        print()
        print(f"{'hour':<21} {'ledger':>14} {'derived':>14} {'unassigned':>11}  state")
        for hour in hours:
            state = "complete" if hour["complete"] else (f"forced by {hour['forced_by']}" if hour["forced"] else "incomplete")
            state += ", remitted" if hour["remitted_at"] else ", not remitted"
            if hour["mismatch"]:
                state += ", MISMATCH"
            print(f"{format_rfc3339(hour['hour']):<21} {hour['ledger']:>14} {hour['derived']:>14} {hour['unassigned']:>11}  {state}")
        print()
        print("ok" if not problems else "problems:\n  " + "\n  ".join(problems))
    return 1 if problems else 0


def _launch(first: datetime, last: datetime, tags: dict | None = None) -> bool:
    import dagster as dg

    from billing_assets.defs.downstream.launch import materialize_hours
    from billing_assets.definitions import defs

    result = materialize_hours(defs, dg.DagsterInstance.get(), first, last, tags=tags)
    print(f"run {result.run_id[:8]} hourly_usage+remittance {first:%Y-%m-%d-%H:%M}..{last:%Y-%m-%d-%H:%M}: {'ok' if result.success else 'FAILED'}")
    return result.success


def run_retry(dead_letter: bool, account: str | None, since: str, until: str) -> int:
    from billing_assets.defs.automation import clock
    from billing_assets.storage import downstream as store

    if not dead_letter:
        return _fail(FlagError("--dead-letter is required (retryable records are retried by the sensor)"))
    try:
        start, end = parse_range(since, until)
    except FlagError as error:
        return _fail(error)
    with _store().engine().begin() as connection:
        hours = store.retry_dead_letters(connection, start, end, account, clock.now())
    if not hours:
        print("no dead letters in range")
        return 0
    print(f"{len(hours)} hour(s) with dead letters made due again (same tracking ids)")
    return 0 if _launch(hours[0], hours[-1]) else 1


def run_reset(account: str | None, since: str, until: str) -> int:
    from billing_assets.storage import downstream as store

    try:
        start, end = parse_range(since, until)
    except FlagError as error:
        return _fail(error)
    with _store().engine().begin() as connection:
        count = store.reset_range(connection, start, end, account)
    print(f"{count} record(s) set to pending; re-sending with the same tracking ids")
    return 0 if count == 0 or _launch(start, end - HOUR) else 1


def run_recalculate(since: str, until: str, dry_run: bool) -> int:
    from billing_assets.accounts.model import AccountsError
    from billing_assets.defs.automation import clock
    from billing_assets.pipeline.remittance import preview
    from billing_assets.registry.model import RegistryError

    try:
        start, end = parse_range(since, until)
    except FlagError as error:
        return _fail(error)
    billing = _store()
    try:
        accounts, registry = billing.accounts(), billing.registry()
    except (AccountsError, RegistryError) as error:
        return _fail(error)
    hours = [start + i * HOUR for i in range(int((end - start) / HOUR))]
    records = preview(billing.engine(), accounts, registry, hours, clock.now())
    for record in records:
        print(f"  + {record.target} {record.account_id} {record.metric} {format_rfc3339(record.hour)} rev {record.revision}: {record.quantity}")
    print(f"{len(records)} record(s) to add" + (" (dry run: nothing changed)" if dry_run else ""))
    if dry_run:
        return 0
    return 0 if _launch(hours[0], hours[-1]) else 1


def run_run(since: str, until: str, force: bool, reason: str | None, operator: str | None) -> int:
    import getpass

    from billing_assets.defs.downstream.launch import force_tags

    try:
        first, last = parse_hour("--since", since), parse_hour("--until", until)
        if last < first:
            raise FlagError("--until must not be before --since (both hours are included)")
        if force and not (reason or "").strip():
            raise FlagError("--force needs --reason TEXT (it is recorded on every forced hour)")
        if reason and not force:
            raise FlagError("--reason is only meaningful with --force")
    except FlagError as error:
        return _fail(error)
    tags = force_tags(reason.strip(), operator or getpass.getuser()) if force else None
    return 0 if _launch(first, last, tags) else 1


def add_parser(commands) -> None:
    remit = commands.add_parser("remittance", help="hourly usage leaving the system: status and operator levers")
    actions = remit.add_subparsers(dest="action", required=True)

    status = actions.add_parser("status", help="sent / pending / retryable / dead letter / carried; exit 1 on a problem")
    status.add_argument("--since", help="first hour (default: 48 hours back)")
    status.add_argument("--until", help="end hour, exclusive")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=lambda a: run_status(a.since, a.until, a.json))

    retry = actions.add_parser("retry", help="send dead letters again (after fixing the cause)")
    retry.add_argument("--dead-letter", action="store_true", required=True)
    retry.add_argument("--account")
    retry.add_argument("--since", required=True)
    retry.add_argument("--until", required=True)
    retry.set_defaults(handler=lambda a: run_retry(a.dead_letter, a.account, a.since, a.until))

    reset = actions.add_parser("reset", help="re-send every record of a range (same tracking ids)")
    reset.add_argument("--account")
    reset.add_argument("--since", required=True)
    reset.add_argument("--until", required=True)
    reset.set_defaults(handler=lambda a: run_reset(a.account, a.since, a.until))

    recalc = actions.add_parser("recalculate", help="re-derive hours from the ledger; print the revisions, then add them")
    recalc.add_argument("--since", required=True)
    recalc.add_argument("--until", required=True)
    recalc.add_argument("--dry-run", action="store_true")
    recalc.set_defaults(handler=lambda a: run_recalculate(a.since, a.until, a.dry_run))

    run = actions.add_parser("run", help="derive and remit hours SINCE..UNTIL (inclusive) in this process, waiting for the run")
    run.add_argument("--since", required=True)
    run.add_argument("--until", required=True)
    run.add_argument("--force", action="store_true", help="remit incomplete hours (recorded with --reason and the operator)")
    run.add_argument("--reason")
    run.add_argument("--operator", help="who forces (default: the login name)")
    run.add_argument("--wait", action="store_true", help="accepted for compatibility: the run always runs in this process")
    run.set_defaults(handler=lambda a: run_run(a.since, a.until, a.force, a.reason, a.operator))
