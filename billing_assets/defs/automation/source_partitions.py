"""Keeping the `exporter_sources` dynamic partitions equal to the registry.

A registry that fails to load is an error to report, never an empty list:
treating it as "no sources" would delete every partition.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from billing_assets.defs.runs import has_unfinished_run
from billing_assets.defs.partitions import SOURCES_PARTITION
from billing_assets.registry.model import Registry


@dataclass(frozen=True)
class PartitionChanges:
    add: tuple[str, ...]
    remove: tuple[str, ...]
    # Removed from the registry but kept this time: a run of the source is unfinished.
    held: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.add and not self.remove


def partition_changes(current: list[str] | set[str], desired: list[str] | set[str]) -> PartitionChanges:
    current, desired = set(current), set(desired)
    return PartitionChanges(tuple(sorted(desired - current)), tuple(sorted(current - desired)))


def desired_partitions(registry: Registry) -> list[str]:
    """Every registered source, enabled or not: disabling stops collection, not history."""
    return [source.source_id for source in registry.sources]


def hold_back_busy(instance: dg.DagsterInstance, changes: PartitionChanges) -> PartitionChanges:
    """Keep, for now, the partition of a removed source that still has a queued or running run.

    Deleting it under that run makes the run's partition keys unknown (its steps
    fail mid-range, the UI loses the run's partitions); once the run finishes,
    the next sync or sensor tick deletes it. One run lookup per removed source.
    """
    busy = tuple(key for key in changes.remove if has_unfinished_run(instance, key))
    if not busy:
        return changes
    return PartitionChanges(changes.add, tuple(key for key in changes.remove if key not in busy), busy)


def apply_changes(instance: dg.DagsterInstance, changes: PartitionChanges) -> None:
    if changes.add:
        instance.add_dynamic_partitions(SOURCES_PARTITION, list(changes.add))
    for key in changes.remove:
        instance.delete_dynamic_partition(SOURCES_PARTITION, key)


def sync_instance(instance: dg.DagsterInstance, registry: Registry) -> PartitionChanges:
    current = instance.get_dynamic_partitions(SOURCES_PARTITION)
    changes = hold_back_busy(instance, partition_changes(current, desired_partitions(registry)))
    apply_changes(instance, changes)
    return changes
