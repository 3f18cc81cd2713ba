"""Benchmark the billing pipeline end to end against reference exporters.

    .venv/bin/python -m bench.run --preset quick         # seconds, SQLite
    .venv/bin/python -m bench.run --preset target        # 10 x 1000 users, 1 h, SQLite + PostgreSQL
    .venv/bin/python -m bench.run --preset memory        # 1 x 10,000 users, 6 h, PostgreSQL: peak RSS
    .venv/bin/python -m bench.run --preset fleet         # 100 sources x 32 days of partitions: control plane

Exporters run as separate processes on loopback over HTTPS (generated CA,
bearer tokens); every measured job runs in a child process so its peak RSS is
its own. PostgreSQL is a throwaway server started like the tests' (fsync off)
unless --postgres-admin-url points at one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from contextlib import ExitStack
from dataclasses import asdict, replace
from datetime import timedelta
from pathlib import Path

from bench.common import dagster_home, database_urls, machine
from bench.exporters import ExporterProcesses, Shape

PRESETS: dict[str, dict] = {
    "quick": {"shape": Shape(2, 50, 1.5, 15, 10), "databases": ["sqlite"], "overhead": False},
    "target": {"shape": Shape(10, 1000, 1.5, 15, 60), "databases": ["sqlite", "postgres"], "overhead": True},
    "memory": {"shape": Shape(1, 10_000, 1.5, 15, 360, page_limit=10), "databases": ["postgres"], "overhead": False},
    "fleet": {"fleet": True},
}


def spawn(job: dict) -> dict:
    """Run one job in a child process; its result plus its own peak RSS."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.worker", json.dumps(job)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{job['mode']} job failed (exit {proc.returncode}):\n{output[-3000:]}")
    line = next(line for line in reversed(output.splitlines()) if line.startswith("BENCH-RESULT "))
    result = json.loads(line.removeprefix("BENCH-RESULT "))
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    # CPU of the child (and of any children it reaped) over its whole life, imports included.
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    return result


def spawn_concurrently(job: dict, concurrency: int) -> dict:
    """`job` split by source over `concurrency` child processes running at once.

    This is how production runs a fleet: one run per source, several sources
    at a time (the run queue limits each source to one run, not the fleet).
    Wall time is the span from the first run's start to the last run's end;
    peak RSS is the largest single process, as each is its own run worker.
    """
    source_ids = job["source_ids"]
    groups = [source_ids[index::concurrency] for index in range(min(concurrency, len(source_ids)))]
    if len(groups) <= 1:
        return spawn(job)
    results: list[dict] = [{} for _ in groups]
    threads = [
        threading.Thread(target=lambda n, group: results[n].update(spawn({**job, "source_ids": group})), args=(n, group))
        for n, group in enumerate(groups)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if any(not result for result in results):
        raise SystemExit(f"a concurrent {job['mode']} job failed; see its output above")
    merged = {
        "wall_s": max(r["ended_at"] for r in results) - min(r["began_at"] for r in results),
        "samples": sum(r["samples"] for r in results),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
        "cpu_s": sum(r["cpu_s"] for r in results),
        "concurrency": len(groups),
    }
    if job["mode"] == "baseline":
        merged.update(pages=sum(r["pages"] for r in results), body_bytes=sum(r["body_bytes"] for r in results))
    else:  # every worker counts the whole database at its end; the last to finish saw everything
        last = max(results, key=lambda r: r["ended_at"])
        merged.update(samples=last["rows"]["usage_samples"], rows=last["rows"], stages_s={})
        for result in results:
            for stage, seconds in result["stages_s"].items():
                merged["stages_s"][stage] = merged["stages_s"].get(stage, 0.0) + seconds
    return merged


def add_rates(result: dict, baseline: dict) -> dict:
    """samples/s of a pipeline result and its ratio to the transport baseline of the same range."""
    result["samples_per_s"] = result["samples"] / result["wall_s"]
    result["ratio_to_baseline"] = result["samples_per_s"] / (baseline["samples"] / baseline["wall_s"])
    return result


def throughput(args, shape: Shape, databases: list[str], with_overhead: bool) -> dict:
    from billing_assets.core.timeutil import floor_minute, now_utc

    report: dict = {"shape": asdict(shape), "label": shape.label(), "machine": machine(), "databases": {}}
    with ExitStack() as stack:
        root = Path(args.workdir) if args.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="billing-bench-")))
        root.mkdir(parents=True, exist_ok=True)
        end = floor_minute(now_utc()) - timedelta(minutes=5)
        start = end - timedelta(minutes=shape.minutes)
        exporters = ExporterProcesses(root)
        stack.callback(exporters.stop)
        exporters.start(shape, billing_start=start - timedelta(days=1))
        registry = exporters.write_registry(root / "sources.yaml")
        source_ids = [entry["source_id"] for entry in exporters.entries]
        fresh = database_urls(databases, root, args.postgres_admin_url, stack)
        def instance_home(name: str, kind: str) -> str:
            """Dagster storage follows the billing database: PostgreSQL runs use PostgreSQL instance storage."""
            return dagster_home(root, name, fresh(kind) if kind == "postgres" and args.dagster_storage == "postgres" else None)

        common = {"sources_file": str(registry), "start": start.isoformat(), "end": end.isoformat(), "source_ids": source_ids}
        print(f"shape: {shape.label()} (~{shape.expected_samples:,} samples)", flush=True)
        baseline = spawn_concurrently({**common, "mode": "baseline"}, args.concurrency)
        report["baseline"] = baseline
        _print_baseline(baseline)
        for kind in databases:
            job = {**common, "mode": "pipeline", "database_url": fresh(kind), "dagster_home": instance_home(f"dagster-{kind}", kind)}
            if args.profile:
                job["profile"] = str(Path(args.profile).resolve() / f"pipeline-{kind}")
            if args.concurrency > 1:
                spawn({**job, "mode": "prepare"})  # schema and partitions once, not raced by the workers
                job["prepared"] = True
            result = add_rates(spawn_concurrently(job, args.concurrency), baseline)
            report["databases"][kind] = result
            _print_pipeline(kind, result)
        if with_overhead:
            kind = databases[-1]
            job = {
                **common, "mode": "overhead", "source_ids": source_ids[:1], "small_minutes": args.overhead_minutes,
                "long_minutes": 60, "database_url": fresh(kind), "dagster_home": instance_home("dagster-overhead", kind),
            }  # fmt: skip
            # Dagster's own cost: a 20-user exporter so data costs nearly nothing.
            small = ExporterProcesses(root / "overhead")
            stack.callback(small.stop)
            small.start(replace(shape, sources=1, users=20), billing_start=start - timedelta(days=1))
            job["sources_file"] = str(small.write_registry(root / "overhead-sources.yaml"))
            job["source_ids"] = [small.entries[0]["source_id"]]
            result = spawn(job)
            report["overhead"] = {**result, "database": kind}
            _print_overhead(kind, result)
    return report


def _print_baseline(result: dict) -> None:
    rate = result["samples"] / result["wall_s"]
    print(
        f"baseline (download + json.loads, {result.get('concurrency', 1)} at a time): {result['samples']:,} samples, {result['pages']} pages, "
        f"{result['body_bytes'] / 1e6:.0f} MB in {result['wall_s']:.1f}s = {rate:,.0f} samples/s, "
        f"peak RSS {result['peak_rss_mib']:.0f} MiB",
        flush=True,
    )


ROW_TABLES = ("exporter_pages", "usage_samples", "usage_minute_buckets", "billing_ledger")  # the rest of "rows" are figures


def _print_pipeline(kind: str, result: dict) -> None:
    stages = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in result["stages_s"].items())
    rows = sum(count for name, count in result["rows"].items() if name in ROW_TABLES)
    print(
        f"pipeline on {kind} ({result.get('concurrency', 1)} at a time): {result['samples']:,} samples in {result['wall_s']:.1f}s = "
        f"{result['samples_per_s']:,.0f} samples/s ({result['ratio_to_baseline']:.2f} of baseline); "
        f"stages: {stages}; peak RSS {result['peak_rss_mib']:.0f} MiB; rows written {rows:,} {result['rows']}",
        flush=True,
    )


def _print_overhead(kind: str, result: dict) -> None:
    print(
        f"dagster overhead on {kind}: 1-minute run {result['one_minute_run_s']:.2f}s, "
        f"{result['long_minutes']}-minute single run {result['long_run_s']:.2f}s "
        f"({result['long_run_s'] / result['one_minute_run_s']:.2f}x a 1-minute run); "
        f"{result['small_minutes']} minutes as one run {result['small_single_run_s']:.2f}s vs one run per minute "
        f"{result['small_per_minute_runs_s']:.2f}s (ratio {result['small_per_minute_runs_s'] / result['small_single_run_s']:.1f}x)",
        flush=True,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    p.add_argument("--sources", type=int)
    p.add_argument("--users", type=int)
    p.add_argument("--tags", type=float, help="inbound tags per user (mean)")
    p.add_argument("--interval", type=int, help="seconds between exporter snapshots")
    p.add_argument("--minutes", type=int, help="length of the range")
    p.add_argument("--page-limit", type=int, help="snapshots per page (registry page_limit)")
    p.add_argument("--db", action="append", choices=["sqlite", "postgres"], help="repeatable; default per preset")
    p.add_argument("--overhead", action=argparse.BooleanOptionalAction, help="measure Dagster's per-run overhead")
    p.add_argument("--overhead-minutes", type=int, default=10)
    p.add_argument(
        "--dagster-storage", choices=["postgres", "sqlite"], default="postgres",
        help="Dagster instance storage for PostgreSQL runs (default postgres, as deploy/dagster.yaml); SQLite runs always use sqlite",
    )
    p.add_argument(
        "--concurrency", type=int, default=1,
        help="sources run this many at a time, each worker its own process (production runs sources concurrently)",
    )
    p.add_argument("--profile", metavar="DIR", help="write a pyinstrument profile of each pipeline worker here")
    p.add_argument("--postgres-admin-url", help="use this server (a superuser URL) instead of starting one")
    p.add_argument("--workdir", help="keep exporters' certs, databases and DAGSTER_HOME here")
    p.add_argument("--json", help="also write the full report here")
    p.add_argument("--fleet-sources", type=int, default=100)
    p.add_argument("--fleet-days", type=int, default=32)
    p.add_argument("--fleet-materialized-hours", type=float, default=24.0, help="recent hours recorded as materialized")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    preset = PRESETS[args.preset]
    os.environ.setdefault("DAGSTER_TELEMETRY_DISABLED", "1")
    if preset.get("fleet"):
        from bench.fleet import run_fleet

        report = run_fleet(args)
    else:
        shape = preset["shape"]
        overrides = {
            "sources": args.sources, "users": args.users, "tags": args.tags, "interval_s": args.interval,
            "minutes": args.minutes, "page_limit": args.page_limit,
        }  # fmt: skip
        shape = replace(shape, **{k: v for k, v in overrides.items() if v is not None})
        with_overhead = preset["overhead"] if args.overhead is None else args.overhead
        report = throughput(args, shape, args.db or preset["databases"], with_overhead)
    report["preset"] = args.preset
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
