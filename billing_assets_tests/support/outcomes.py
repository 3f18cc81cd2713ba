"""What a failed billing run left behind: rows per table, the checkpoint, and
every text Dagster recorded, so security tests can assert "failed for this
reason and wrote nothing" and "no secret anywhere" against the real stores."""

from __future__ import annotations

from datetime import datetime

import dagster as dg
from sqlalchemy import func, select

from billing_assets.defs.runs import materialize_range
from billing_assets.definitions import defs
from billing_assets.storage import checkpoints
from billing_assets.storage.schema import (
    billing_ledger,
    exporter_pages,
    exporter_snapshot_rows,
    usage_minute_buckets,
    usage_samples,
)

WRITTEN_TABLES = (exporter_pages, exporter_snapshot_rows, usage_samples, usage_minute_buckets, billing_ledger)


def run_minutes(billing_env, source_id: str, start: datetime, end: datetime) -> dg.ExecuteInProcessResult:
    """One real Dagster run over [start, end) of one source; failures are returned, not raised."""
    return materialize_range(defs, billing_env.instance(), source_id, start, end, raise_on_error=False)


def rows_written(engine, source_id: str) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            table.name: connection.execute(
                select(func.count()).select_from(table).where(table.c.source_id == source_id)
            ).scalar_one()
            for table in WRITTEN_TABLES
        }


def nothing_written(engine, source_id: str) -> bool:
    return not any(rows_written(engine, source_id).values())


def checkpoint(engine, source_id: str) -> dict | None:
    with engine.connect() as connection:
        return checkpoints.read_checkpoint(connection, source_id)


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    """Every step failure's message and description, as an operator sees them."""
    parts = []
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            parts.append(data.user_failure_data.description)
        if data.error is not None:
            parts.append(data.error.to_string())
    return "\n".join(parts)


def everything_dagster_recorded(instance: dg.DagsterInstance, run_id: str) -> str:
    """All event log records of a run (metadata included), its config and tags."""
    run = instance.get_run_by_id(run_id)
    texts = [str(record) for record in instance.all_logs(run_id)]
    texts += [repr(run.run_config), repr(run.tags), repr(run)]
    return "\n".join(texts)


def serve(billing_env, upstream, script, billing_start, **overrides):
    """Install a scripted history, register its source for Dagster runs, return the Source."""
    import yaml

    from billing_assets.defs.partitions import SOURCES_PARTITION
    from billing_assets.registry.model import Source

    upstream.server.install(script)
    entry = upstream.registry_entry(script, billing_start, **overrides)
    billing_env.sources_file.write_text(yaml.safe_dump({"sources": [entry]}, sort_keys=False))
    billing_env.instance().add_dynamic_partitions(SOURCES_PARTITION, [script.source_id])
    return Source.model_validate(entry)


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, dg.AssetCheckEvaluation]]:
    """The run's asset check evaluations by check name, then by partition key (`minute|source`).

    The partitioned checks evaluate each window on its own; a `None` key would
    be a result that lands on no partition (what the UI cannot show).
    """
    results: dict[str, dict[str, dg.AssetCheckEvaluation]] = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            by_key = results.setdefault(evaluation.asset_check_key.name, {})
            assert evaluation.partition not in by_key, f"two evaluations of {evaluation.partition} in one run"
            by_key[evaluation.partition] = evaluation
    return results


def window_keys(source_id: str, start, end) -> list[str]:
    """The `minute|source` keys of [start, end) of one source, as the checks' evaluations name them."""
    from datetime import timedelta

    from billing_assets.defs.partitions import partition_key

    keys, minute = [], start
    while minute < end:
        keys.append(str(partition_key(minute, source_id)))
        minute += timedelta(minutes=1)
    return keys
