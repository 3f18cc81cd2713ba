"""SQL of the downstream stage: hourly usage, completeness, remittance rows.

Hourly usage is derived set-based in the database (the ledger of an hour at
fleet scale is millions of rows; seed 003's first design died of loading them
into the process). Remittance rows are only ever inserted under their unique
constraints, and claimed for sending with a lease, so a row is with at most
one sender at a time and a crashed sender's rows come back after the lease.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, text

from billing_assets.core.hourly import HOUR, Interval
from billing_assets.core.remittance import NewRecord
from billing_assets.storage.bulk import bulk_insert, bulk_upsert, upsert
from billing_assets.storage.dialect import is_postgres
from billing_assets.storage.sql import typed
from billing_assets.storage.times import time_param
from billing_assets.storage.schema import hour_completeness
from billing_assets.storage.types import UTCDateTime

MEMBERS = "_remit_members"


def hour_lock(connection: Connection, scope: str, key: str) -> None:
    """Serialise writers of one (scope, key) for the transaction on PostgreSQL; SQLite writers are serial already."""
    if is_postgres(connection):
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"{scope}:{key}"})


# --- hourly usage -----------------------------------------------------------------

def _load_members(connection: Connection, intervals: Sequence[Interval]) -> None:
    if is_postgres(connection):
        connection.exec_driver_sql(f"DROP TABLE IF EXISTS {MEMBERS}")
        connection.exec_driver_sql(
            f"CREATE TEMPORARY TABLE {MEMBERS} (uuid text NOT NULL, account_id text NOT NULL, "
            "valid_from timestamptz NOT NULL, valid_until timestamptz NOT NULL) ON COMMIT DROP"
        )
    else:
        connection.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{MEMBERS}")
        connection.exec_driver_sql(
            f"CREATE TEMP TABLE {MEMBERS} (uuid TEXT NOT NULL, account_id TEXT NOT NULL, "
            "valid_from DATETIME NOT NULL, valid_until DATETIME NOT NULL)"
        )
    stamp = time_param(connection)
    bulk_insert(
        connection, MEMBERS, ("uuid", "account_id", "valid_from", "valid_until"),
        ((i.uuid, i.account_id, stamp(i.valid_from), stamp(i.valid_until)) for i in intervals),
    )
    if is_postgres(connection):
        connection.exec_driver_sql(f"CREATE INDEX ON {MEMBERS} (uuid)")
        connection.exec_driver_sql(f"ANALYZE {MEMBERS}")
    else:
        connection.exec_driver_sql(f"CREATE INDEX temp.ix_{MEMBERS} ON {MEMBERS} (uuid)")


# Ledger entries of the hour summed per (user, minute) over all sources, each
# minute owned by the membership interval containing it (or by nobody).
_OWNED = """
per_user AS (
    SELECT l.uuid, l.bucket_start, SUM(l.uplink_bytes) AS up, SUM(l.downlink_bytes) AS down
    FROM billing_ledger l
    WHERE l.source_id IN :sources AND l.bucket_start >= :start AND l.bucket_start < :end
    GROUP BY l.uuid, l.bucket_start
),
owned AS (
    SELECT m.account_id, p.uuid, p.up, p.down
    FROM per_user p
    LEFT JOIN {members} m ON m.uuid = p.uuid AND p.bucket_start >= m.valid_from AND p.bucket_start < m.valid_until
),
assigned AS (
    SELECT account_id, SUM(up) AS up, SUM(down) AS down FROM owned WHERE account_id IS NOT NULL GROUP BY account_id
),
unassigned AS (
    SELECT uuid, SUM(up) AS up, SUM(down) AS down FROM owned WHERE account_id IS NULL GROUP BY uuid
)
""".format(members=MEMBERS)

_INSERT_ASSIGNED = """
INSERT INTO hourly_usage (account_id, metric, hour, quantity, updated_at)
SELECT account_id, 'uplink_bytes', :start, up, :now FROM assigned
UNION ALL SELECT account_id, 'downlink_bytes', :start, down, :now FROM assigned
"""
_INSERT_UNASSIGNED = """
INSERT INTO unassigned_usage (uuid, metric, hour, quantity, updated_at)
SELECT uuid, 'uplink_bytes', :start, up, :now FROM unassigned
UNION ALL SELECT uuid, 'downlink_bytes', :start, down, :now FROM unassigned
"""


def _statement(sql: str):
    return text(sql).bindparams(
        bindparam("sources", expanding=True),
        *(bindparam(name, type_=UTCDateTime()) for name in ("start", "end", "now")),
    )


@dataclass(frozen=True)
class DerivedHour:
    hour: datetime
    accounts: int
    assigned_bytes: int
    unassigned_users: int
    unassigned_bytes: int


def derive_hour(connection: Connection, hour: datetime, intervals: Sequence[Interval], source_ids: Sequence[str], now: datetime) -> DerivedHour:
    """Replace the hour's hourly_usage and unassigned_usage with what the ledger says now.

    Rows are replaced, not upserted: an account whose usage left the hour (a
    membership moved, a correction) must end with no row, not a stale one.
    On PostgreSQL the sum and both inserts are one statement (data-modifying
    CTEs), so the ledger of the hour is scanned once.
    """
    hour_lock(connection, "hourly_usage", hour.isoformat())
    params = {"sources": list(source_ids) or ["\x00none"], "start": hour, "end": hour + HOUR, "now": now}
    hour_only = typed("DELETE FROM hourly_usage WHERE hour = :hour", {"hour": "ts"})
    connection.execute(hour_only, {"hour": hour})
    connection.execute(typed("DELETE FROM unassigned_usage WHERE hour = :hour", {"hour": "ts"}), {"hour": hour})
    _load_members(connection, intervals)
    if is_postgres(connection):
        # An hour of a fleet is millions of entries grouped by (user, minute):
        # in memory that is one hash aggregate, spilled it is an external sort
        # (3x slower); JIT compilation costs more than it saves on one scan.
        connection.exec_driver_sql("SET LOCAL work_mem = '256MB'")
        connection.exec_driver_sql("SET LOCAL jit = off")
        sql = (
            f"WITH {_OWNED}, a AS ({_INSERT_ASSIGNED} RETURNING 1), u AS ({_INSERT_UNASSIGNED} RETURNING 1) "
            "SELECT (SELECT COUNT(*) FROM a), (SELECT COUNT(*) FROM u)"
        )
        connection.execute(_statement(sql), params)
    else:
        connection.execute(_statement(f"WITH {_OWNED} {_INSERT_ASSIGNED}"), params)
        connection.execute(_statement(f"WITH {_OWNED} {_INSERT_UNASSIGNED}"), params)
        connection.exec_driver_sql(f"DROP TABLE temp.{MEMBERS}")
    summary = typed(
        "SELECT COUNT(DISTINCT account_id), COALESCE(SUM(quantity), 0) FROM hourly_usage WHERE hour = :hour", {"hour": "ts"}
    )
    accounts, assigned = connection.execute(summary, {"hour": hour}).one()
    users, unassigned = connection.execute(
        typed("SELECT COUNT(DISTINCT uuid), COALESCE(SUM(quantity), 0) FROM unassigned_usage WHERE hour = :hour", {"hour": "ts"}),
        {"hour": hour},
    ).one()
    return DerivedHour(hour, int(accounts), int(assigned), int(users), int(unassigned))


def hourly_rows(connection: Connection, hour: datetime) -> dict[tuple[str, str], int]:
    rows = connection.execute(
        typed("SELECT account_id, metric, quantity FROM hourly_usage WHERE hour = :hour", {"hour": "ts"}), {"hour": hour}
    )
    return {(account, metric): int(quantity) for account, metric, quantity in rows}


def ledger_hour_total(connection: Connection, start: datetime, end: datetime) -> dict[datetime, dict[str, int]]:
    """hour -> {metric: bytes} straight from the ledger (all users), for status and tests."""
    rows = connection.execute(
        typed(
            "SELECT bucket_start, SUM(uplink_bytes), SUM(downlink_bytes) FROM billing_ledger "
            "WHERE bucket_start >= :start AND bucket_start < :end GROUP BY bucket_start",
            {"start": "ts", "end": "ts"},
            {"bucket_start": "ts"},
        ),
        {"start": start, "end": end},
    )
    totals: dict[datetime, dict[str, int]] = {}
    for minute, up, down in rows:
        hour = minute.replace(minute=0, second=0, microsecond=0)
        entry = totals.setdefault(hour, {"uplink_bytes": 0, "downlink_bytes": 0})
        entry["uplink_bytes"] += int(up)
        entry["downlink_bytes"] += int(down)
    return totals


# --- completeness ---------------------------------------------------------------

def read_completeness(connection: Connection, hours: Iterable[datetime]) -> dict[datetime, dict]:
    hours = list(hours)
    if not hours:
        return {}
    rows = connection.execute(
        hour_completeness.select().where(hour_completeness.c.hour.in_(hours))
    ).mappings()
    return {row["hour"]: dict(row) for row in rows}


def write_completeness(
    connection: Connection, hour: datetime, complete: bool, detail: dict, now: datetime,
    forced_by: str | None = None, reason: str | None = None, derived: bool = False,
) -> dict:
    """Record the hour's verdict; a force is sticky (who and why stay on record)."""
    current = read_completeness(connection, [hour]).get(hour) or {}
    forced = bool(current.get("forced")) or forced_by is not None
    row = {
        "hour": hour,
        "complete": complete,
        "forced": forced,
        "forced_by": forced_by if forced_by is not None else current.get("forced_by"),
        "reason": reason if forced_by is not None else current.get("reason"),
        "detail": json.dumps(detail, sort_keys=True),
        "evaluated_at": now,
        "derived_at": now if derived else current.get("derived_at"),
        "remitted_at": current.get("remitted_at"),
    }
    upsert(connection, hour_completeness, [row], key=["hour"], update=[k for k in row if k != "hour"])
    return row


def mark_remitted(connection: Connection, hour: datetime, now: datetime) -> None:
    connection.execute(
        typed("UPDATE hour_completeness SET remitted_at = :now WHERE hour = :hour", {"now": "ts", "hour": "ts"}),
        {"now": now, "hour": hour},
    )


def remittable_hours(connection: Connection, start: datetime, end: datetime) -> dict[datetime, dict]:
    rows = connection.execute(
        hour_completeness.select().where(hour_completeness.c.hour >= start, hour_completeness.c.hour < end)
    ).mappings()
    return {row["hour"]: dict(row) for row in rows}


# --- planning ---------------------------------------------------------------------

@dataclass
class PlanInputs:
    usage: dict[tuple[str, str], int]
    """(account_id, metric) -> the hour's total."""
    accounted: dict[tuple[str, str, str], int]
    """(target, account_id, metric) -> accounted for this hour (present iff planned before)."""
    revisions: dict[tuple[str, str, str], int]
    carried: dict[tuple[str, str, str], int]


def load_plan_inputs(connection: Connection, hour: datetime, targets: Sequence[str]) -> PlanInputs:
    usage = hourly_rows(connection, hour)
    p = {"hour": hour}
    accounted = {
        (t, a, m): int(q)
        for t, a, m, q in connection.execute(
            typed("SELECT target, account_id, metric, accounted FROM remittance_plan WHERE hour = :hour", {"hour": "ts"}), p
        )
    }
    revisions = {
        (t, a, m): int(n)
        for t, a, m, n in connection.execute(
            typed(
                "SELECT target, account_id, metric, COUNT(*) FROM remittances WHERE hour = :hour GROUP BY target, account_id, metric",
                {"hour": "ts"},
            ),
            p,
        )
    }
    carried: dict[tuple[str, str, str], int] = {}
    if targets:
        rows = connection.execute(
            text("SELECT target, account_id, metric, carried FROM remittance_carry WHERE target IN :targets").bindparams(
                bindparam("targets", expanding=True)
            ),
            {"targets": list(targets)},
        )
        carried = {(t, a, m): int(c) for t, a, m, c in rows}
    return PlanInputs(usage, accounted, revisions, carried)


RECORD_COLUMNS = (
    "target", "account_id", "subscription_key", "metric", "hour", "revision", "quantity", "tracking_id",
    "status", "attempts", "created_at",
)  # fmt: skip


def save_plan(
    connection: Connection,
    hour: datetime,
    records: Sequence[tuple[NewRecord, str]],
    accounted: dict[tuple[str, str, str], int],
    carried: dict[tuple[str, str, str], int],
    now: datetime,
) -> int:
    """Insert new records (UNIQUE key and tracking id refuse a duplicate) and the plan's bookkeeping."""
    stamp = time_param(connection)
    created = stamp(now)
    rows = (
        (r.target, r.account_id, subscription, r.metric, stamp(r.hour), r.revision, r.quantity, r.tracking_id, "pending", 0, created)
        for r, subscription in records
    )
    inserted = bulk_insert(connection, "remittances", RECORD_COLUMNS, rows)
    # COPY into a temporary table + one INSERT … ON CONFLICT on PostgreSQL: an hour of a
    # large fleet plans hundreds of thousands of keys, too many for row-by-row upserts.
    bulk_upsert(
        connection, "remittance_plan", ("target", "account_id", "metric", "hour", "accounted", "planned_at"),
        ((t, a, m, stamp(hour), q, created) for (t, a, m), q in accounted.items()),
        key=("target", "account_id", "metric", "hour"), update=("accounted", "planned_at"),
    )
    bulk_upsert(
        connection, "remittance_carry", ("target", "account_id", "metric", "carried", "updated_at"),
        ((t, a, m, c, created) for (t, a, m), c in carried.items()),
        key=("target", "account_id", "metric"), update=("carried", "updated_at"),
    )
    return inserted


# --- delivery ---------------------------------------------------------------------

@dataclass(frozen=True)
class Claimed:
    id: int
    target: str
    account_id: str
    subscription_key: str
    metric: str
    hour: datetime
    revision: int
    quantity: int
    tracking_id: str
    attempts: int


_CLAIM_COLUMNS = "id, target, account_id, subscription_key, metric, hour, revision, quantity, tracking_id, attempts"


def held_from(connection: Connection, target: str, now: datetime) -> datetime | None:
    """The earliest hour with a retryable row not yet due: later hours wait behind it,
    so a target that was down receives its hours in order once it is back."""
    return connection.execute(
        typed(
            "SELECT MIN(hour) AS hour FROM remittances WHERE target = :target AND status = 'retryable' AND next_attempt_at > :now",
            {"now": "ts"},
            {"hour": "ts"},
        ),
        {"target": target, "now": now},
    ).scalar_one()


def claim_due(
    connection: Connection, target: str, now: datetime, run_id: str, lease: timedelta, limit: int, before: datetime | None
) -> list[Claimed]:
    """Take up to `limit` due rows (pending, or retryable and due) for this run, oldest hour first.

    The claim is a lease written in this short transaction, not a lock held
    while sending: another run skips leased rows; a run that dies leaves
    them to come back when the lease ends (and to be re-sent with the same
    tracking id, which the target dedups). On PostgreSQL SKIP LOCKED lets
    two runs claim disjoint rows without waiting on each other.
    """
    common = (
        "target = :target AND (claimed_until IS NULL OR claimed_until < :now) "
        # Rows of a CSV batch reserved but not finished belong to that batch: only
        # its recovery may write them, or they would appear in two files.
        "AND NOT EXISTS (SELECT 1 FROM remittance_files f WHERE f.remittance_id = remittances.id AND f.status = 'writing')"
    )
    params = {"target": target, "now": now}
    types = {"now": "ts"}
    if before is not None:
        common += " AND hour < :before"
        params["before"] = before
        types["before"] = "ts"
    lock = " FOR UPDATE SKIP LOCKED" if is_postgres(connection) else ""
    # Two queries, each walking ix_remittances_claim (target, status, hour, revision, id)
    # in order, so a claim costs its LIMIT, not a sort of every pending row.
    rows = []
    for status_filter in ("status = 'retryable' AND next_attempt_at <= :now", "status = 'pending'"):
        room = limit - len(rows)
        if room <= 0:
            break
        rows += connection.execute(
            typed(
                f"SELECT {_CLAIM_COLUMNS} FROM remittances WHERE {status_filter} AND {common} "
                f"ORDER BY hour, revision, id LIMIT :limit{lock}",
                types, {"hour": "ts"},
            ),
            {**params, "limit": room},
        ).all()
    rows.sort(key=lambda row: (row[5], row[6], row[0]))
    if not rows:
        return []
    ids = [row[0] for row in rows]
    for start in range(0, len(ids), 5000):  # SQLite caps bound variables per statement
        connection.execute(
            text("UPDATE remittances SET claimed_by = :run, claimed_until = :until WHERE id IN :ids").bindparams(
                bindparam("ids", expanding=True), bindparam("until", type_=_ts())
            ),
            {"run": run_id, "until": now + lease, "ids": ids[start:start + 5000]},
        )
    return [Claimed(*row) for row in rows]


def _ts():
    return UTCDateTime()


def release(connection: Connection, ids: Sequence[int], run_id: str) -> None:
    """Give back claimed rows this run did not attempt (it stopped early: the target is down)."""
    if ids:
        connection.execute(
            text("UPDATE remittances SET claimed_by = NULL, claimed_until = NULL WHERE id IN :ids AND claimed_by = :run").bindparams(
                bindparam("ids", expanding=True)
            ),
            {"ids": list(ids), "run": run_id},
        )


@dataclass(frozen=True)
class Attempt:
    remittance_id: int
    attempts_before: int
    outcome: str
    """'accepted' | 'retryable' | 'refused'."""
    http_status: int | None
    detail: str
    next_attempt_at: datetime | None


def record_attempts(connection: Connection, attempts: Sequence[Attempt], run_id: str, now: datetime) -> None:
    """Every attempt is kept; the row moves to sent / retryable / failed.

    An accepted answer is recorded whoever holds the lease (the target has
    the record; saying otherwise would re-send it for nothing). Other
    answers change the row only while this run still holds it.
    """
    if not attempts:
        return
    stamp = time_param(connection)
    bulk_insert(
        connection, "remittance_attempts",
        ("remittance_id", "attempted_at", "outcome", "http_status", "detail", "run_id"),
        ((a.remittance_id, stamp(now), a.outcome, a.http_status, a.detail[:2000], run_id) for a in attempts),
    )
    ts = _ts()
    accepted = [a.remittance_id for a in attempts if a.outcome == "accepted"]
    for start in range(0, len(accepted), 5000):  # SQLite caps bound variables per statement
        connection.execute(
            text(
                "UPDATE remittances SET status = 'sent', sent_at = :now, attempts = attempts + 1, next_attempt_at = NULL, "
                "claimed_by = NULL, claimed_until = NULL WHERE id IN :ids AND status <> 'sent'"
            ).bindparams(bindparam("ids", expanding=True), bindparam("now", type_=ts)),
            {"ids": accepted[start:start + 5000], "now": now},
        )
    for attempt in attempts:
        if attempt.outcome == "accepted":
            continue
        status = "retryable" if attempt.outcome == "retryable" else "failed"
        connection.execute(
            text(
                "UPDATE remittances SET status = :status, attempts = attempts + 1, next_attempt_at = :next, last_error = :error, "
                "claimed_by = NULL, claimed_until = NULL WHERE id = :id AND claimed_by = :run AND status <> 'sent'"
            ).bindparams(bindparam("next", type_=ts)),
            {"status": status, "next": attempt.next_attempt_at, "error": attempt.detail[:2000], "id": attempt.remittance_id, "run": run_id},
        )


# --- CSV batches ------------------------------------------------------------------

def reserve_batch(
    connection: Connection, target: str, hour: datetime, claimed: Sequence[Claimed], name_for,
    line_of: dict[str, int], sha256: str, now: datetime,
) -> str:
    """Step 1 of the CSV protocol: a new batch name for (target, hour), its rows assigned ('writing').

    The file's bytes are a pure function of its lines, so line numbers and
    sha256 are known before it is written and go in with the reservation:
    step 3 is then one UPDATE, and a recovery can check the file it adopts.
    """
    hour_lock(connection, "remittance_files", f"{target}:{hour.isoformat()}")
    prefix = name_for(hour, 0)[: -len("0000.csv")]
    used = connection.execute(
        text("SELECT COUNT(DISTINCT file_name) FROM remittance_files WHERE target = :target AND file_name LIKE :prefix"),
        {"target": target, "prefix": prefix + "%"},
    ).scalar_one()
    name = name_for(hour, int(used) + 1)
    stamp = time_param(connection)
    bulk_insert(
        connection, "remittance_files",
        ("target", "file_name", "line", "sha256", "remittance_id", "status", "created_at"),
        ((target, name, line_of[row.tracking_id], sha256, row.id, "writing", stamp(now)) for row in claimed),
    )
    return name


def unfinished_batches(connection: Connection, target: str) -> dict[str, list[Claimed]]:
    """Batches reserved but not marked written: a run died between steps 1 and 3."""
    rows = connection.execute(
        typed(
            f"SELECT f.file_name, {', '.join('r.' + c.strip() for c in _CLAIM_COLUMNS.split(','))} "
            "FROM remittance_files f JOIN remittances r ON r.id = f.remittance_id "
            "WHERE f.target = :target AND f.status = 'writing' ORDER BY f.file_name, f.line",
            None, {"hour": "ts"},
        ),
        {"target": target},
    ).all()
    batches: dict[str, list[Claimed]] = {}
    for row in rows:
        batches.setdefault(row[0], []).append(Claimed(*row[1:]))
    return batches


def finish_batch(connection: Connection, target: str, name: str, claimed: Sequence[Claimed], run_id: str, now: datetime) -> None:
    """Step 3: the file is there; its manifest lines are written, its rows sent."""
    connection.execute(
        text(
            "UPDATE remittance_files SET status = 'written', written_at = :now "
            "WHERE target = :target AND file_name = :name AND status = 'writing'"
        ).bindparams(bindparam("now", type_=_ts())),
        {"now": now, "target": target, "name": name},
    )
    record_attempts(connection, [Attempt(row.id, row.attempts, "accepted", None, f"written to {name}", None) for row in claimed], run_id, now)


# --- operator queries and commands --------------------------------------------------

def _range_params(since: datetime, until: datetime, account: str | None) -> tuple[str, dict]:
    where = "hour >= :since AND hour < :until"
    params: dict = {"since": since, "until": until}
    if account is not None:
        where += " AND account_id = :account"
        params["account"] = account
    return where, params


def _typed_range(sql: str, extra_ts: Sequence[str] = ()):
    return typed(sql, {"since": "ts", "until": "ts", **{name: "ts" for name in extra_ts}})


def books(connection: Connection, since: datetime, until: datetime) -> list[dict]:
    """Per (target, account, metric) over [since, until): what was sent, what is owed, and the plan's totals."""
    where, params = _range_params(since, until, None)
    records = connection.execute(
        _typed_range(
            f"SELECT target, account_id, metric, status, COUNT(*), SUM(quantity) FROM remittances WHERE {where} "
            "GROUP BY target, account_id, metric, status"
        ),
        params,
    ).all()
    accounted = connection.execute(
        _typed_range(f"SELECT target, account_id, metric, SUM(accounted) FROM remittance_plan WHERE {where} GROUP BY target, account_id, metric"),
        params,
    ).all()
    carry = connection.execute(text("SELECT target, account_id, metric, carried FROM remittance_carry")).all()
    table: dict[tuple[str, str, str], dict] = {}

    def entry(key):
        return table.setdefault(key, {
            "target": key[0], "account_id": key[1], "metric": key[2], "sent": 0, "pending": 0, "retryable": 0,
            "failed": 0, "sent_records": 0, "pending_records": 0, "retryable_records": 0, "failed_records": 0,
            "accounted": 0, "carried": 0,
        })

    for target, account, metric, status, count, quantity in records:
        row = entry((target, account, metric))
        row[status] += int(quantity or 0)
        row[f"{status}_records"] += int(count)
    for target, account, metric, total in accounted:
        entry((target, account, metric))["accounted"] = int(total or 0)
    for target, account, metric, carried in carry:
        if (target, account, metric) in table or carried:
            entry((target, account, metric))["carried"] = int(carried)
    return [table[key] for key in sorted(table)]


def hours_report(connection: Connection, since: datetime, until: datetime) -> list[dict]:
    """Per hour: the ledger, what was derived from it (assigned + unassigned), and the verdict."""
    ledger = ledger_hour_total(connection, since, until)
    params = {"since": since, "until": until}
    derived = defaultdict(int)
    for hour, total in connection.execute(
        typed("SELECT hour, SUM(quantity) FROM hourly_usage WHERE hour >= :since AND hour < :until GROUP BY hour",
              {"since": "ts", "until": "ts"}, {"hour": "ts"}),
        params,
    ):
        derived[hour] += int(total)
    unassigned = defaultdict(int)
    for hour, total in connection.execute(
        typed("SELECT hour, SUM(quantity) FROM unassigned_usage WHERE hour >= :since AND hour < :until GROUP BY hour",
              {"since": "ts", "until": "ts"}, {"hour": "ts"}),
        params,
    ):
        unassigned[hour] += int(total)
    verdicts = remittable_hours(connection, since, until)
    hours = sorted(set(ledger) | set(derived) | set(unassigned) | set(verdicts))
    report = []
    for hour in hours:
        verdict = verdicts.get(hour) or {}
        total = sum(ledger.get(hour, {}).values())
        report.append({
            "hour": hour, "ledger": total, "derived": derived[hour] + unassigned[hour], "unassigned": unassigned[hour],
            "complete": bool(verdict.get("complete")), "forced": bool(verdict.get("forced")),
            "forced_by": verdict.get("forced_by"), "reason": verdict.get("reason"),
            "remitted_at": verdict.get("remitted_at"),
        })
    return report


def retry_dead_letters(connection: Connection, since: datetime, until: datetime, account: str | None, now: datetime) -> list[datetime]:
    """Dead letters in range become due retries (same tracking ids); the hours they belong to."""
    where, params = _range_params(since, until, account)
    hours = [row[0] for row in connection.execute(
        typed(f"SELECT DISTINCT hour FROM remittances WHERE status = 'failed' AND {where}", {"since": "ts", "until": "ts"}, {"hour": "ts"}),
        params,
    )]
    connection.execute(
        _typed_range(
            f"UPDATE remittances SET status = 'retryable', next_attempt_at = :now, claimed_by = NULL, claimed_until = NULL "
            f"WHERE status = 'failed' AND {where}", ("now",),
        ),
        {**params, "now": now},
    )
    return sorted(hours)


def reset_range(connection: Connection, since: datetime, until: datetime, account: str | None) -> int:
    """Every record in range back to pending, to be sent again with its own tracking id.

    The target dedups what it already has; a CSV target gets a new batch file
    holding the same lines (same tracking ids), as a re-send must.
    """
    where, params = _range_params(since, until, account)
    result = connection.execute(
        _typed_range(
            f"UPDATE remittances SET status = 'pending', next_attempt_at = NULL, sent_at = NULL, claimed_by = NULL, "
            f"claimed_until = NULL WHERE status <> 'pending' AND {where}"
        ),
        params,
    )
    return int(result.rowcount or 0)


def due_retry_hours(connection: Connection, now: datetime) -> list[datetime]:
    return [row[0] for row in connection.execute(
        typed(
            "SELECT DISTINCT hour FROM remittances WHERE status = 'retryable' AND next_attempt_at <= :now "
            "AND (claimed_until IS NULL OR claimed_until < :now)",
            {"now": "ts"}, {"hour": "ts"},
        ),
        {"now": now},
    )]


def ledger_changed_minutes(connection: Connection, after: datetime) -> dict[datetime, datetime]:
    """bucket_start -> latest created_at of entries created after `after` (index-only on the created_at index)."""
    rows = connection.execute(
        typed(
            "SELECT bucket_start, MAX(created_at) AS created FROM billing_ledger WHERE created_at > :after GROUP BY bucket_start",
            {"after": "ts"}, {"bucket_start": "ts", "created": "ts"},
        ),
        {"after": after},
    )
    return {minute: created for minute, created in rows}
