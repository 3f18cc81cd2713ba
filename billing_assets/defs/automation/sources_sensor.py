import dagster as dg

from billing_assets.defs.automation.source_partitions import desired_partitions, hold_back_busy, partition_changes
from billing_assets.defs.partitions import SOURCES_PARTITION, source_partitions
from billing_assets.defs.resources import BillingStore
from billing_assets.registry.model import RegistryError


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def exporter_sources_sensor(context: dg.SensorEvaluationContext, billing: BillingStore):
    """Adds and removes `exporter_sources` partitions as the registry changes.

    Removing a source's partition hides it from scheduling only; its samples,
    buckets and ledger rows stay in the billing database. A removed source with
    a queued or running run keeps its partition until a later tick finds the
    run finished: deleting it under the run would fail the run's steps.
    """
    try:
        registry = billing.registry()
    except RegistryError as error:
        return dg.SkipReason(f"registry not applied: {error}")
    current = source_partitions.get_partition_keys(dynamic_partitions_store=context.instance)
    changes = hold_back_busy(context.instance, partition_changes(current, desired_partitions(registry)))
    held = f"; kept {list(changes.held)} until their unfinished runs end" if changes.held else ""
    if changes.held:
        context.log.info(f"{SOURCES_PARTITION}: not deleting {list(changes.held)} yet: a run of each is still queued or running")
    if changes.empty:
        return dg.SkipReason(
            f"removed from the registry but a run is still queued or running, deleted on a later tick: {list(changes.held)}"
            if changes.held else "exporter_sources already match the registry"
        )
    requests = []
    if changes.add:
        requests.append(source_partitions.build_add_request(list(changes.add)))
    if changes.remove:
        requests.append(source_partitions.build_delete_request(list(changes.remove)))
    context.log.info(f"{SOURCES_PARTITION}: add {list(changes.add)} remove {list(changes.remove)}{held}")
    return dg.SensorResult(dynamic_partitions_requests=requests)
