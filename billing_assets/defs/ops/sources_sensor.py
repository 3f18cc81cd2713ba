import dagster as dg

from billing_assets.defs.ops.source_partitions import desired_partitions, partition_changes
from billing_assets.defs.partitions import SOURCES_PARTITION, source_partitions
from billing_assets.defs.resources import BillingStore
from billing_assets.registry.model import RegistryError


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def exporter_sources_sensor(context: dg.SensorEvaluationContext, billing: BillingStore):
    """Adds and removes `exporter_sources` partitions as the registry changes.

    Removing a source's partition hides it from scheduling only; its samples,
    buckets and ledger rows stay in the billing database.
    """
    try:
        registry = billing.registry()
    except RegistryError as error:
        return dg.SkipReason(f"registry not applied: {error}")
    current = source_partitions.get_partition_keys(dynamic_partitions_store=context.instance)
    changes = partition_changes(current, desired_partitions(registry))
    if changes.empty:
        return dg.SkipReason("exporter_sources already match the registry")
    requests = []
    if changes.add:
        requests.append(source_partitions.build_add_request(list(changes.add)))
    if changes.remove:
        requests.append(source_partitions.build_delete_request(list(changes.remove)))
    context.log.info(f"{SOURCES_PARTITION}: add {list(changes.add)} remove {list(changes.remove)}")
    return dg.SensorResult(dynamic_partitions_requests=requests)
