import dagster as dg

from billing_assets.accounts.model import AccountsError
from billing_assets.defs.downstream.partitions import ForceTagError, force_from_tags, hour_key, hour_partitions, run_hours
from billing_assets.defs.automation import clock
from billing_assets.defs.resources import BillingStore
from billing_assets.pipeline.hourly import derive_hours
from billing_assets.registry.credentials import CredentialError
from billing_assets.registry.model import RegistryError
from billing_assets.defs.table_contracts import OWNERS, table_metadata
from billing_assets.storage import schema


@dg.asset(
    partitions_def=hour_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=["billing_ledger"],
    kinds={"sql"},
    group_name="downstream",
    owners=OWNERS,
    metadata=table_metadata(schema.hourly_usage),
)
def hourly_usage(context: dg.AssetExecutionContext, billing: BillingStore) -> dg.MaterializeResult:
    """Ledger summed per (account, metric, hour) over all sources, and each hour's completeness.

    Derived for every hour asked, complete or not (usage is a fact either
    way); completeness only decides whether `remittance` sends it. An
    operator's force (run tags) is recorded on the hour with who and why.
    """
    try:
        force = force_from_tags(dict(context.run.tags))
        accounts, registry = billing.accounts(), billing.registry()
    except (ForceTagError, AccountsError, RegistryError, CredentialError) as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    results = derive_hours(billing.engine(), accounts, registry, run_hours(context), clock.now(), billing.settle(), force)
    hours = {
        hour_key(r.hour): {
            "complete": r.verdict.complete,
            "forced": r.forced,
            **({"forced_by": r.forced_by, "reason": r.reason} if r.forced else {}),
            "holding_back": {sid: r.verdict.sources[sid] for sid in r.verdict.holding_back},
            "accounts": r.derived.accounts,
            "unassigned_users": r.derived.unassigned_users,
        }
        for r in results
    }
    return dg.MaterializeResult(
        metadata={
            "hours": len(results),
            "complete_hours": sum(1 for r in results if r.verdict.complete),
            "forced_hours": sum(1 for r in results if r.forced and not r.verdict.complete),
            "incomplete_hours": sum(1 for r in results if not r.remittable),
            "assigned_bytes": sum(r.derived.assigned_bytes for r in results),
            "unassigned_bytes": sum(r.derived.unassigned_bytes for r in results),
            "per_hour": dg.MetadataValue.json(hours),
            "dagster/row_count": sum(r.derived.accounts for r in results) * 2,
        }
    )
