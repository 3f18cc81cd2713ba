"""Keeping the `exporter_sources` dynamic partitions equal to the registry.

A registry that fails to load is an error to report, never an empty list:
treating it as "no sources" would delete every partition.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from billing_assets.defs.partitions import SOURCES_PARTITION
from billing_assets.registry.model import Registry


@dataclass(frozen=True)
class PartitionChanges:
    add: tuple[str, ...]
    remove: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not self.add and not self.remove


def partition_changes(current: list[str] | set[str], desired: list[str] | set[str]) -> PartitionChanges:
    current, desired = set(current), set(desired)
    return PartitionChanges(tuple(sorted(desired - current)), tuple(sorted(current - desired)))


def desired_partitions(registry: Registry) -> list[str]:
    """Every registered source, enabled or not: disabling stops collection, not history."""
    return [source.source_id for source in registry.sources]


def apply_changes(instance: dg.DagsterInstance, changes: PartitionChanges) -> None:
    if changes.add:
        instance.add_dynamic_partitions(SOURCES_PARTITION, list(changes.add))
    for key in changes.remove:
        instance.delete_dynamic_partition(SOURCES_PARTITION, key)


def sync_instance(instance: dg.DagsterInstance, registry: Registry) -> PartitionChanges:
    current = instance.get_dynamic_partitions(SOURCES_PARTITION)
    changes = partition_changes(current, desired_partitions(registry))
    apply_changes(instance, changes)
    return changes
