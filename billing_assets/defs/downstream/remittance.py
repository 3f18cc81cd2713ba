import dagster as dg

from billing_assets.accounts.model import AccountsError
from billing_assets.defs.downstream.hourly_usage import hourly_usage
from billing_assets.defs.downstream.partitions import hour_key, hour_partitions, run_hours
from billing_assets.defs.automation import clock
from billing_assets.defs.resources import BillingStore
from billing_assets.delivery.killbill import DeliveryConfigError
from billing_assets.pipeline.remittance import deliver, plan_hours
from billing_assets.registry.credentials import CredentialError
from billing_assets.storage import downstream as store

from billing_assets.defs.table_contracts import OWNERS, table_metadata
from billing_assets.storage import schema

@dg.asset(
    partitions_def=hour_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[hourly_usage],
    kinds={"sql"},
    group_name="downstream",
    owners=OWNERS,
    metadata=table_metadata(schema.remittances),
)
def remittance(context: dg.AssetExecutionContext, billing: BillingStore) -> dg.MaterializeResult:
    """Records for the run's remittable hours, then delivery of everything due.

    Only complete or forced hours are planned; an incomplete one is left for
    the run after its sources catch up. Delivery is not limited to the run's
    hours: whatever is due for a target (new rows, retries whose time has
    come) goes out oldest hour first, so one run after an outage drains it.
    A target that answers "retry later" stops for this run; that is not a
    failure of the run, the sensor comes back for it.
    """
    try:
        accounts = billing.accounts()
    except (AccountsError, CredentialError) as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    hours = run_hours(context)
    engine = billing.engine()
    with billing.read_engine().connect() as connection:
        verdicts = store.read_completeness(connection, hours)
    ready = [h for h in hours if (v := verdicts.get(h)) and (v["complete"] or v["forced"])]
    held = [hour_key(h) for h in hours if h not in ready]
    if held:
        context.log.info(f"not remitted, incomplete: {', '.join(held)}")
    plan = plan_hours(engine, accounts, ready, clock.now())
    try:
        delivery = deliver(engine, accounts, context.run.run_id, clock.now, billing.delivery_settings(), context.log.info)
    except (DeliveryConfigError, CredentialError) as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    return dg.MaterializeResult(
        metadata={
            "hours_remitted": len(ready),
            "hours_held_incomplete": dg.MetadataValue.json(held),
            "records_planned": plan.records,
            "quantity_planned": plan.quantity,
            "accepted": delivery.accepted,
            "retryable": delivery.retryable,
            "refused": delivery.refused,
            "files": dg.MetadataValue.json(delivery.files[-50:]),
            "targets_stopped": dg.MetadataValue.json(delivery.stopped),
            "dagster/row_count": plan.records,
        }
    )
