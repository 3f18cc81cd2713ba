"""The only place this project touches Dagster's private API (`dagster._…`).

Six things have no public form in Dagster 1.13 (or none that is affordable):

- building an asset backfill in code (what the UI's "Launch backfill" does),
  with a dynamic-partitions store that answers from one query:
  `billing reconcile` submits one per source so an operator can watch it;
- knowing that the definitions are being loaded in a run worker
  (reconstruction), which is how the rolling partition start stays ahead of
  any key a long-lived code server offers (defs/partitions.py);
- telling a check evaluation which materialization it judged
  (`AssetCheckEvaluationTargetMaterializationData`): without it the UI counts
  a partitioned check's per-window result as neither passed nor failed
  (docs/ui.md, research note 1);
- the names of the range tags a single-run backfill sets; they are plain
  strings, spelled out here, and checked against Dagster's;
- per-minute metadata for every key of a range step at once
  (`add_partition_metadata`); the public call re-lists the range per key;
- a run worker keeping one instance connection per storage on PostgreSQL
  (`hold_instance_connections`), as the webserver does, instead of a new
  connection per event, and not asking the catalog again for a table it
  has already seen.

`test_dagster_internals.py` and `test_dagster_internals_runs.py` exercise each against the installed Dagster, so
an upgrade that moves or changes one fails there, loudly, and not in
production.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence

import dagster as dg

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
UNFINISHED_RUN_STATUSES = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
    dg.DagsterRunStatus.SUSPENDED,
)


class KnownPartitions:
    """What `known_dynamic_partitions` read, plus the ranges of the other dimensions resolved so far.

    `store` is the dynamic-partitions store Dagster is handed (its
    `CachingDynamicPartitionsLoader`: keys it was not told about still go to
    the instance). Only for the thread that made it.
    """

    def __init__(self, store):
        self.store = store
        self.ranges: dict[tuple, list[str]] = {}

    def has_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> bool:
        return self.store.has_dynamic_partition(partitions_def_name, partition_key)


def known_dynamic_partitions(instance: dg.DagsterInstance, partitions_def_name: str, keys: Sequence[str]) -> KnownPartitions:
    """A dynamic-partitions store that already knows which of `keys` exist: one query, not one per question.

    Building a backfill over a (minute, source) range asks whether the source
    exists for each end of the range and each asset; asked of the instance,
    that is a query (and, on PostgreSQL, new connections) each time: 8 per
    backfill. This store answers those from one bounded query for all `keys`.
    """
    from dagster._core.instance.types import CachingDynamicPartitionsLoader

    loader = CachingDynamicPartitionsLoader(instance)
    loader.get_existing_dynamic_partitions(partitions_def_name, list(keys))
    return KnownPartitions(loader)


def _keys_in_range(known: KnownPartitions, partitions_def: dg.PartitionsDefinition, first_key: str, last_key: str) -> list:
    """`partitions_def.get_partition_keys_in_range`, with each non-dynamic dimension's range resolved once per `known`.

    A multi-partition range is the product of its dimensions' ranges (as
    Dagster computes it); the minute dimension's is a cron walk that costs
    more than the rest of a backfill, and every source of a reconcile asks
    for the same one. Dynamic dimensions are asked of `known` every time.
    """
    import itertools

    if not isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return list(partitions_def.get_partition_keys_in_range(dg.PartitionKeyRange(first_key, last_key)))
    first, last = partitions_def.get_partition_key_from_str(first_key), partitions_def.get_partition_key_from_str(last_key)
    sequences = []
    for dimension in partitions_def.partitions_defs:
        part = dg.PartitionKeyRange(first.keys_by_dimension[dimension.name], last.keys_by_dimension[dimension.name])
        if isinstance(dimension.partitions_def, dg.DynamicPartitionsDefinition):
            sequences.append(dimension.partitions_def.get_partition_keys_in_range(part))
            continue
        memo = (id(dimension.partitions_def), dimension.name, part.start, part.end)
        if memo not in known.ranges:
            known.ranges[memo] = list(dimension.partitions_def.get_partition_keys_in_range(part))
        sequences.append(known.ranges[memo])
    names = [dimension.name for dimension in partitions_def.partitions_defs]
    return [dg.MultiPartitionKey(dict(zip(names, keys))) for keys in itertools.product(*sequences)]


def asset_backfill(
    known: KnownPartitions,
    partitions_def: dg.PartitionsDefinition,
    backfill_id: str,
    first_key: str,
    last_key: str,
    assets: Sequence[str],
    tags: dict[str, str],
    title: str,
    description: str,
):
    """An asset backfill of the keys [first_key, last_key] of `assets`, as the UI would launch it; not yet submitted.

    `instance.add_backfill(backfill)` submits it (`backfill.backfill_id`).
    The assets must all have `partitions_def`: the range is resolved once and
    shared (Dagster's `from_partitions_by_assets` resolves it per asset, which
    is most of the cost of building one), and the target is built from that
    range, not a list of names (the names path calls Dagster's deprecated
    `AssetSelection.sources()` and warns on every reconcile).
    """
    from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
    from dagster._core.execution.backfill import PartitionBackfill

    with dg.partition_loading_context(dynamic_partitions_store=known.store):
        keys = partitions_def.empty_subset().with_partition_keys(_keys_in_range(known, partitions_def, first_key, last_key))
        return PartitionBackfill.from_asset_graph_subset(
            backfill_id=backfill_id,
            backfill_timestamp=time.time(),
            tags=tags,
            dynamic_partitions_store=known.store,
            asset_graph_subset=AssetGraphSubset(partitions_subsets_by_asset_key={dg.AssetKey(name): keys for name in assets}),
            title=title,
            description=description,
            run_config=None,
        )


def loading_in_run_worker() -> bool:
    """True when Dagster is reconstructing the code location (a run or step worker).

    Dagster sets its load context before it imports the module, in the code
    server (INITIALIZATION) as in the run worker (RECONSTRUCTION); a plain
    import (tests, `dagster asset materialize`, `billing`) counts as a first load.
    """
    from dagster._core.definitions.definitions_load_context import DefinitionsLoadContext, DefinitionsLoadType

    return DefinitionsLoadContext.is_set() and DefinitionsLoadContext.get().load_type == DefinitionsLoadType.RECONSTRUCTION


def latest_materialization_targets(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition_keys: Sequence[str], max_pages: int = 10
) -> dict[str, object]:
    """For each key, its latest materialization as the target a check evaluation names.

    The UI shows a partition's check as Passed/Failed only when the
    evaluation's `target_materialization_data` is that partition's latest
    materialization (`AssetCheckPartitionInfo.is_current`); an evaluation
    without it leaves the window *Missing*. One `fetch_materializations` for
    the whole range, newest first: a range run just materialized every key, so
    the first page holds them all; older keys (a check run on its own) page on,
    bounded by `max_pages`. Keys never materialized are absent.
    """
    from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluationTargetMaterializationData

    wanted = {str(key) for key in partition_keys}
    if not wanted:
        return {}
    targets: dict[str, object] = {}
    cursor = None
    for _ in range(max_pages):
        missing = sorted(wanted - targets.keys())
        page = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=missing), limit=2 * len(missing) or 1, cursor=cursor
        )
        for record in page.records:  # newest first: the first record of a key is its latest
            if record.partition_key in wanted and record.partition_key not in targets:
                targets[record.partition_key] = AssetCheckEvaluationTargetMaterializationData(
                    storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
                )
        if len(targets) == len(wanted) or not page.has_more:
            break
        cursor = page.cursor
    return targets


_POOLED: "weakref.WeakSet[dg.DagsterInstance]" = weakref.WeakSet()


def hold_instance_connections(instance: dg.DagsterInstance) -> bool:
    """Let this process's instance keep one open connection per storage instead of one per event.

    dagster-postgres opens a fresh psycopg2 connection for every event it
    stores (`NullPool`), and a range run stores hundreds: the planned and
    per-minute materializations, one evaluation per window and check (not
    batchable), the step and log events. A new connection costs a backend
    fork and authentication, several milliseconds each. The webserver avoids
    this with `DagsterInstance.optimize_for_webserver`, which swaps each
    storage's engine for a pool of one; a run worker is as long-lived as its
    run, so the same swap is safe there. No statement timeout is set (0):
    a billing run's own events must never be cut off. Once per instance;
    returns whether the swap was made (not on SQLite storages, whose
    engines are already per file).
    """
    if instance in _POOLED:
        return False
    _POOLED.add(instance)
    if type(instance.event_log_storage).__module__.split(".")[0] != "dagster_postgres":
        return False
    instance.optimize_for_webserver(statement_timeout=0, pool_recycle=3600, max_overflow=HELD_OVERFLOW)
    for storage in (instance.run_storage, instance.event_log_storage, instance.schedule_storage):
        _keep_overflow_connections(getattr(getattr(storage, "_engine", None), "pool", None))
        _remember_present_tables(storage)
    return True


def _remember_present_tables(storage) -> None:
    """Answer `has_table` for a table already seen to exist without asking the catalog again.

    dagster-postgres asks PostgreSQL's catalog on every call, and it calls
    for each check evaluation it stores (`supports_asset_checks`) and each
    event batch (the asset tags table): ~1 ms each, 180 evaluations a range
    run. A table the storage has does not vanish while a run worker lives;
    a table it lacks is still asked about each time, so a migration made
    meanwhile is seen.
    """
    ask = getattr(storage, "has_table", None)
    if ask is None:
        return
    present: set[str] = set()

    def has_table(table_name: str) -> bool:
        if table_name in present:
            return True
        exists = bool(ask(table_name))
        if exists:
            present.add(table_name)
        return exists

    storage.has_table = has_table


HELD_OVERFLOW = 4


def _keep_overflow_connections(engine_pool) -> None:
    """Keep the pool's overflow connections open once made, up to its limit.

    The webserver's pool holds one connection; a second one is opened and
    closed again each time the storage nests a connection inside another
    (`store_event_batch` asking `has_table` for the asset tags table), several
    times a step. Letting the pool's queue hold `pool_size + max_overflow`
    idle connections keeps those too: at most five per storage, made once.
    """
    queue = getattr(engine_pool, "_pool", None)
    if queue is not None and hasattr(queue, "maxsize"):
        queue.maxsize = engine_pool.size() + HELD_OVERFLOW


def add_partition_metadata(context: dg.AssetExecutionContext, per_key: dict[str, dict]) -> None:
    """Metadata for each partition key of the running step, merged over the step's shared metadata.

    The public `context.add_asset_metadata(metadata, partition_key=key)` does
    this one key at a time, and each call re-lists every key of the asset's
    range from the instance (the dynamic `source` dimension) to check the key
    belongs to the run: tens of milliseconds per minute on PostgreSQL
    instance storage, seconds per hour-long range. The keys here come from
    `context.partition_keys`, so the check is made once for all of them,
    then each goes to the accumulator that `add_asset_metadata` itself
    ends in.
    """
    if not per_key:
        return
    targeted = {str(key) for key in context.partition_keys}
    strays = sorted(set(per_key) - targeted)
    if strays:
        raise dg.DagsterInvariantViolationError(f"metadata for partitions this run does not target: {strays[:3]}")
    step = context.op_execution_context._step_execution_context
    accumulator = step._metadata_accumulator
    asset_key = context.asset_key
    for key, metadata in per_key.items():
        accumulator = accumulator.with_additional_asset_metadata(asset_key=asset_key, partition_key=key, metadata=metadata)
    step._metadata_accumulator = accumulator
