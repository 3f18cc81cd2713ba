"""Checks of the downstream stage, partitioned by hour like the assets.

Partitioned, so a run evaluates only its own hours (an unpartitioned check on
a partitioned asset makes Dagster enumerate every partition).
"""


import json
import warnings

import dagster as dg
from sqlalchemy import bindparam, text

from billing_assets.defs.downstream.partitions import hour_key, hour_partitions, run_hours
from billing_assets.defs.resources import BillingStore
from billing_assets.storage import downstream as store
from billing_assets.storage.types import UTCDateTime


def _hour_check(asset: str, description: str):
    def decorate(fn):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.PreviewWarning)  # partitioned checks are "preview" in 1.13
            return dg.asset_check(asset=asset, partitions_def=hour_partitions, blocking=False, description=description)(fn)

    return decorate


@_hour_check("hourly_usage", "Every hour of the run is complete (all sources collected past its end + settle), or forced.")
def hour_complete(context: dg.AssetCheckExecutionContext, billing: BillingStore) -> dg.AssetCheckResult:
    hours = run_hours(context)
    with billing.read_engine().connect() as connection:
        verdicts = store.read_completeness(connection, hours)
    state = {}
    for hour in hours:
        row = verdicts.get(hour)
        if row is None:
            state[hour_key(hour)] = "not evaluated"
        elif row["complete"]:
            state[hour_key(hour)] = "complete"
        elif row["forced"]:
            state[hour_key(hour)] = f"forced by {row['forced_by']}: {row['reason']}"
        else:
            holding = {sid: why for sid, why in json.loads(row["detail"]).get("sources", {}).items()
                       if why not in ("ok", "disabled", "not billing yet")}
            state[hour_key(hour)] = "incomplete: " + "; ".join(f"{sid}: {why}" for sid, why in sorted(holding.items()))
    waiting = [key for key, value in state.items() if not value.startswith(("complete", "forced"))]
    return dg.AssetCheckResult(
        passed=not waiting,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"not remitted yet: {', '.join(waiting)}" if waiting else "every hour complete or forced",
        metadata={"incomplete_hours": len(waiting), "per_hour": dg.MetadataValue.json(state)},
    )


@_hour_check("hourly_usage", "No usage of users outside every account in the run's hours (kept, never remitted).")
def no_unassigned_usage(context: dg.AssetCheckExecutionContext, billing: BillingStore) -> dg.AssetCheckResult:
    hours = run_hours(context)
    statement = text(
        "SELECT COUNT(DISTINCT uuid), COALESCE(SUM(quantity), 0) FROM unassigned_usage WHERE hour IN :hours AND quantity <> 0"
    ).bindparams(bindparam("hours", expanding=True, type_=UTCDateTime()))
    with billing.read_engine().connect() as connection:
        users, quantity = connection.execute(statement, {"hours": hours}).one()
    return dg.AssetCheckResult(
        passed=not users,
        severity=dg.AssetCheckSeverity.WARN,
        description=(f"{users} users with {quantity} bytes in no account; add them to accounts.yaml (a covering `since` "
                     "remits them on the next re-derivation)") if users else "every byte belongs to an account",
        metadata={"unassigned_users": int(users), "unassigned_bytes": int(quantity)},
    )


@_hour_check("remittance", "No record of the run's hours in the dead letter (refused by its target).")
def no_dead_letters(context: dg.AssetCheckExecutionContext, billing: BillingStore) -> dg.AssetCheckResult:
    hours = run_hours(context)
    statement = text(
        "SELECT target, COUNT(*) FROM remittances WHERE hour IN :hours AND status = 'failed' GROUP BY target"
    ).bindparams(bindparam("hours", expanding=True, type_=UTCDateTime()))
    with billing.read_engine().connect() as connection:
        failed = {target: int(count) for target, count in connection.execute(statement, {"hours": hours})}
    total = sum(failed.values())
    return dg.AssetCheckResult(
        passed=total == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(f"{total} records refused ({', '.join(f'{t}: {n}' for t, n in sorted(failed.items()))}); "
                     "fix the cause, then `billing remittance retry --dead-letter`") if total else "no dead letters",
        metadata={"dead_letters": total},
    )


downstream_checks = [hour_complete, no_unassigned_usage, no_dead_letters]
