"""One measured job in its own process, so its peak RSS is its own.

The driver (`bench.run`) passes a JSON job on argv and reads one JSON line
back; it takes the child's peak RSS from wait4(), not from the child.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import sys
import time
from datetime import datetime

STEP_STAGE = {
    "exporter_snapshots": "fetch",
    "usage_samples": "dedup",
    "usage_minute_buckets": "bucket",
    "billing_ledger": "ledger",
}
COUNTED_TABLES = ("exporter_pages", "usage_samples", "usage_minute_buckets", "billing_ledger")
# What fetch received: its pages are kept as bodies (migration 0012), each with its sample count.
RECEIVED_SAMPLES = "SELECT COALESCE(SUM(sample_count), 0) FROM exporter_pages WHERE body IS NOT NULL"


def _environment(job: dict) -> None:
    os.environ["BILLING_DATABASE_URL"] = job["database_url"]
    os.environ["BILLING_SOURCES_FILE"] = job["sources_file"]
    os.environ["DAGSTER_HOME"] = job["dagster_home"]
    os.environ.setdefault("DAGSTER_TELEMETRY_DISABLED", "1")


def stage_seconds(instance, run_id: str) -> dict[str, float]:
    """Step start→success per asset, from the run's own event log."""
    import dagster as dg

    starts, ends = {}, {}
    for record in instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS}):
        event = record.dagster_event
        target = starts if event.event_type == dg.DagsterEventType.STEP_START else ends
        target[event.step_key] = record.timestamp
    return {STEP_STAGE.get(step, step): ends[step] - starts[step] for step in starts if step in ends}


def table_rows(database_url: str) -> dict[str, int]:
    from sqlalchemy import text

    from billing_assets.storage.engine import get_engine

    with get_engine(database_url).connect() as connection:
        rows = {table: int(connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one()) for table in COUNTED_TABLES}
        rows["samples_received"] = int(connection.execute(text(RECEIVED_SAMPLES)).scalar_one())
        rows["page_bytes_kept"] = int(connection.execute(text("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM exporter_pages")).scalar_one())
        return rows


def _run_range(defs, instance, source_id: str, start: datetime, end: datetime) -> tuple[float, dict[str, float]]:
    from billing_assets.defs.runs import materialize_range

    began = time.perf_counter()
    result = materialize_range(defs, instance, source_id, start, end, raise_on_error=False, log_level="WARNING")
    wall = time.perf_counter() - began
    if not result.success:
        failure = next((e for e in result.all_events if e.is_step_failure), None)
        raise SystemExit(f"run for {source_id} failed: {failure.event_specific_data.error.message if failure else '?'}")
    return wall, stage_seconds(instance, result.run_id)


def _prepare(job: dict):
    import dagster as dg

    from billing_assets.definitions import defs
    from billing_assets.defs.automation.source_partitions import sync_instance
    from billing_assets.registry.model import load_registry
    from billing_assets.storage.engine import get_engine, migrate

    _environment(job)
    instance = dg.DagsterInstance.get()
    if not job.get("prepared"):
        migrate(get_engine(job["database_url"]))
        sync_instance(instance, load_registry(job["sources_file"]))
    return defs, instance


def prepare(job: dict) -> dict:
    """Schema and dynamic partitions, once, before concurrent workers start."""
    _prepare(job)
    return {}


def pipeline(job: dict) -> dict:
    """The whole range of every source, one Dagster run per source."""
    if job.get("profile"):
        return _profiled(job)
    defs, instance = _prepare(job)
    start, end = datetime.fromisoformat(job["start"]), datetime.fromisoformat(job["end"])
    stages: dict[str, float] = {}
    wall = 0.0
    began_at = time.time()
    for source_id in job["source_ids"]:
        seconds, per_stage = _run_range(defs, instance, source_id, start, end)
        wall += seconds
        for stage, value in per_stage.items():
            stages[stage] = stages.get(stage, 0.0) + value
    ended_at = time.time()
    rows = table_rows(job["database_url"])
    return {
        "wall_s": wall, "stages_s": stages, "samples": rows["usage_samples"], "rows": rows,
        "began_at": began_at, "ended_at": ended_at,
    }  # fmt: skip


def _profiled(job: dict) -> dict:
    """`pipeline` under pyinstrument; the text profile lands in job["profile"]-<pid>.txt (bench.run --profile)."""
    from pyinstrument import Profiler

    profiler = Profiler()
    profiler.start()
    try:
        return pipeline({**job, "profile": None})
    finally:
        profiler.stop()
        Path(job["profile"]).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{job['profile']}-{os.getpid()}.txt").write_text(profiler.output_text(unicode=False, show_all=False))
        profiler.last_session.save(f"{job['profile']}-{os.getpid()}.pyisession")


def baseline(job: dict) -> dict:
    """The transport limit: every page of the same range over the same HTTPS
    client, parsed with json.loads and counted, nothing validated or stored."""
    from billing_assets.core.timeutil import format_rfc3339
    from billing_assets.registry.model import load_registry
    from billing_assets.transport.client import ExporterClient

    registry = load_registry(job["sources_file"])
    start, end = datetime.fromisoformat(job["start"]), datetime.fromisoformat(job["end"])
    samples = pages = body_bytes = 0
    began, began_at = time.perf_counter(), time.time()
    for source_id in job["source_ids"]:
        source = registry.get(source_id)
        since = start - source.overlap
        params = {"since": format_rfc3339(since), "until": format_rfc3339(end), "limit": str(source.page_limit)}
        with ExporterClient(source) as client:
            cursor = None
            while True:
                body = client._get("/v1/snapshots/window", dict(params, cursor=cursor) if cursor else params)
                page = json.loads(body)
                pages += 1
                body_bytes += len(body)
                samples += sum(len(item["samples"]) for item in page["items"])
                if not page["has_more"]:
                    break
                cursor = page["next_cursor"]
    return {
        "wall_s": time.perf_counter() - began, "samples": samples, "pages": pages, "body_bytes": body_bytes,
        "began_at": began_at, "ended_at": time.time(),
    }  # fmt: skip


def overhead(job: dict) -> dict:
    """Dagster's cost per run and per partition, on a shape too small to matter.

    A warm-up run first, so imports and first-run caches are not billed to
    whichever variant happens to run first.
    """
    from billing_assets.core.timeutil import MINUTE

    defs, instance = _prepare(job)
    source_id = job["source_ids"][0]
    start = datetime.fromisoformat(job["start"])
    small, long = job["small_minutes"], job["long_minutes"]
    _run_range(defs, instance, source_id, start - MINUTE * (small + long + 5), start - MINUTE * (small + long + 4))
    one_minute, _ = _run_range(defs, instance, source_id, start - MINUTE * (long + 2), start - MINUTE * (long + 1))
    long_run, _ = _run_range(defs, instance, source_id, start - MINUTE * long, start)
    per_minute = 0.0
    for index in range(small):
        minute = start - MINUTE * (long + small + 3) + MINUTE * index
        seconds, _ = _run_range(defs, instance, source_id, minute, minute + MINUTE)
        per_minute += seconds
    base = start - MINUTE * (2 * long + small + 10)
    range_run, _ = _run_range(defs, instance, source_id, base, base + MINUTE * small)
    return {
        "one_minute_run_s": one_minute,
        "long_minutes": long,
        "long_run_s": long_run,
        "small_minutes": small,
        "small_single_run_s": range_run,
        "small_per_minute_runs_s": per_minute,
    }


JOBS = {"prepare": prepare, "pipeline": pipeline, "baseline": baseline, "overhead": overhead}


def main() -> int:
    job = json.loads(sys.argv[1])
    if "dagster_home" in job:
        _environment(job)
    result = JOBS[job["mode"]](job)
    print("BENCH-RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
