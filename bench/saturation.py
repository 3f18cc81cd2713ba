"""Where one machine ends: samples/s against concurrent runs and fleet size, with the CPU split.

    .venv/bin/python -m bench.saturation            # the curve: 12 sources x {500, 1000} users, 30 min, 1..4 at a time (~15 min)
    .venv/bin/python -m bench.saturation --quick    # a small curve in 1-2 minutes

Every point is the target preset's shape (1.5 tags per user, a snapshot every 15 s, HTTPS
exporters in their own processes, PostgreSQL billing database *and* PostgreSQL Dagster
storage, as production) run with `bench.run`'s machinery: a fresh pair of databases, the
schema and partitions prepared first, then the sources split over N worker processes
(`spawn_concurrently`, one single-run range per source, as the run queue runs them).

For each point it reads, before and after, the CPU time (utime + stime) of:

- the PostgreSQL server: the postmaster's own and reaped children's time plus every live
  backend's (`/proc/<pid>/stat`; the Dagster storage lives on the same server, so its
  event-log writes count here too);
- the Python workers: each worker's whole life from `wait4()` (imports included);
- the exporters (upstream, would not be on the billing host in production);
- the whole machine (`/proc/stat`), so the CPU of other people's work is visible as "other".

Shares are of the machine's capacity over the point (cores x wall time of the point), so a
point's shares add up to at most 100 %. `µs/sample` is PostgreSQL + worker CPU per stored
sample: the cost that capacity estimates scale with (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, replace
from datetime import timedelta
from pathlib import Path

from bench.common import dagster_home, database_urls, machine
from bench.exporters import ExporterProcesses, Shape
from bench.run import PRESETS, add_rates, spawn, spawn_concurrently

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def process_cpu_s(pid: int, with_reaped_children: bool = True) -> float:
    """utime + stime (+ cutime + cstime: children it waited for) of one process, in seconds."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # fields[0] is /proc stat field 3 (state); utime..cstime are fields 14..17.
    ticks = int(fields[11]) + int(fields[12])
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def postgres_cpu_s(postmaster_pid: int) -> float:
    """The whole server: the postmaster, every backend it reaped, every live backend."""
    total = process_cpu_s(postmaster_pid)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None and int(fields[1]) == postmaster_pid:
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    # guest time is already counted in user/nice
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def measure_point(
    common: dict, concurrency: int, fresh, root: Path, name: str, pg_pid: int, exporter_pids: list[int]
) -> dict:
    """One point of the curve: baseline, then the pipeline at `concurrency` with CPU read around it."""
    baseline = spawn_concurrently({**common, "mode": "baseline"}, concurrency)
    job = {
        **common, "mode": "pipeline", "database_url": fresh("postgres"),
        "dagster_home": dagster_home(root, f"dagster-{name}", fresh("postgres")),
    }  # fmt: skip
    spawn({**job, "mode": "prepare"})  # schema and partitions outside the measured interval, at every concurrency
    job["prepared"] = True
    load_before = os.getloadavg()
    began = time.perf_counter()  # the interval brackets both CPU readings, so no reading outgrows cores x wall
    pg0, exp0, busy0 = postgres_cpu_s(pg_pid), sum(process_cpu_s(pid) for pid in exporter_pids), machine_busy_s()
    result = spawn_concurrently(job, concurrency)
    pg1, exp1, busy1 = postgres_cpu_s(pg_pid), sum(process_cpu_s(pid) for pid in exporter_pids), machine_busy_s()
    wall = time.perf_counter() - began
    capacity = wall * (os.cpu_count() or 1)
    add_rates(result, baseline)
    cpu = {
        "postgres": pg1 - pg0,
        "workers": result["cpu_s"],
        "exporters": exp1 - exp0,
        "machine_busy": busy1 - busy0,
    }
    ours = cpu["postgres"] + cpu["workers"] + cpu["exporters"]
    # the rest of the machine's busy time (other people's work); clock-tick rounding can make the
    # difference overshoot by a tick or two, so it is bounded by what is left of the capacity
    cpu["other"] = min(max(0.0, cpu["machine_busy"] - ours), max(0.0, capacity - ours))
    shares = {key: 100.0 * value / capacity for key, value in cpu.items()}
    return {
        "concurrency": concurrency,
        "samples": result["samples"],
        "samples_per_s": result["samples_per_s"],
        "ratio_to_baseline": result["ratio_to_baseline"],
        "baseline_samples_per_s": baseline["samples"] / baseline["wall_s"],
        "runs_wall_s": result["wall_s"],  # first run's start to last run's end (bench.run's figure)
        "point_wall_s": wall,  # worker processes' start to end: the interval the CPU is read over
        "cpu_s": cpu,
        "share_pct": shares,
        "pipeline_us_per_sample": 1e6 * (cpu["postgres"] + cpu["workers"]) / max(result["samples"], 1),
        "postgres_fraction_of_pipeline": cpu["postgres"] / max(cpu["postgres"] + cpu["workers"], 1e-9),
        "peak_rss_mib": result["peak_rss_mib"],
        "stages_s": result["stages_s"],
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def run_curve(args) -> dict:
    from billing_assets.core.timeutil import floor_minute, now_utc
    from billing_assets.devtools.postgres import pg_binaries_available, start_postgres

    if not pg_binaries_available():
        raise SystemExit("PostgreSQL binaries (initdb, pg_ctl, postgres) not on PATH: the curve needs a local server to read its CPU")
    target: Shape = PRESETS["target"]["shape"]
    report: dict = {"machine": machine(), "cores": os.cpu_count(), "load_at_start": os.getloadavg(), "fleets": []}
    with ExitStack() as stack:
        root = Path(args.workdir) if args.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="billing-sat-")))
        root.mkdir(parents=True, exist_ok=True)
        server = start_postgres()
        stack.callback(server.stop)
        pg_pid = postmaster_pid(server.root / "data")
        fresh = database_urls(["postgres"], root, server.admin_url, stack)
        end = floor_minute(now_utc()) - timedelta(minutes=5)
        for users in args.users:
            shape = replace(
                target, sources=args.sources, users=users, minutes=args.minutes,
                tags=args.tags or target.tags, interval_s=args.interval or target.interval_s,
            )  # fmt: skip
            start = end - timedelta(minutes=shape.minutes)
            fleet_root = root / f"users-{users}"
            exporters = ExporterProcesses(fleet_root)
            stack.callback(exporters.stop)
            exporters.start(shape, billing_start=start - timedelta(days=1))
            registry = exporters.write_registry(fleet_root / "sources.yaml")
            common = {
                "sources_file": str(registry), "start": start.isoformat(), "end": end.isoformat(),
                "source_ids": [entry["source_id"] for entry in exporters.entries],
            }  # fmt: skip
            fleet = {"shape": asdict(shape), "label": shape.label(), "points": []}
            report["fleets"].append(fleet)
            print(f"fleet: {shape.label()} (~{shape.expected_samples:,} samples per point)", flush=True)
            for concurrency in args.concurrency:
                point = measure_point(
                    common, concurrency, fresh, fleet_root, f"c{concurrency}", pg_pid, [p.pid for p in exporters.procs]
                )
                fleet["points"].append(point)
                print("  " + _point_line(point), flush=True)
            exporters.stop()
    report["load_at_end"] = os.getloadavg()
    return report


def _point_line(point: dict) -> str:
    share = point["share_pct"]
    return (
        f"{point['concurrency']} at a time: {point['samples']:,} samples, {point['samples_per_s']:,.0f} samples/s "
        f"({point['ratio_to_baseline']:.3f} of baseline {point['baseline_samples_per_s']:,.0f}/s), "
        f"CPU share postgres {share['postgres']:.0f} % / workers {share['workers']:.0f} % / exporters {share['exporters']:.0f} % "
        f"/ other {share['other']:.0f} %, {point['pipeline_us_per_sample']:.1f} µs/sample, "
        f"wall {point['point_wall_s']:.1f}s, load {point['load_before'][0]:.2f}"
    )


def table(report: dict) -> str:
    """The curve as one Markdown table."""
    lines = [
        "| fleet | at a time | samples | samples/s | ratio to baseline | CPU postgres | CPU workers | CPU exporters "
        "| CPU other | pg : worker | µs/sample (pg+worker CPU) | wall (s) | load 1-min before |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for fleet in report["fleets"]:
        shape = fleet["shape"]
        label = f"{shape['sources']} x {shape['users']:,} users, {shape['minutes']} min"
        for p in fleet["points"]:
            s = p["share_pct"]
            pg = 100 * p["postgres_fraction_of_pipeline"]
            lines.append(
                f"| {label} | {p['concurrency']} | {p['samples']:,} | {p['samples_per_s']:,.0f} | {p['ratio_to_baseline']:.3f} "
                f"| {s['postgres']:.0f} % | {s['workers']:.0f} % | {s['exporters']:.0f} % | {s['other']:.0f} % "
                f"| {pg:.0f} : {100 - pg:.0f} | {p['pipeline_us_per_sample']:.1f} | {p['point_wall_s']:.1f} | {p['load_before'][0]:.2f} |"
            )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.saturation", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 sources x {50, 100} users, 10 min, 1 and 2 at a time (1-2 minutes)")
    p.add_argument("--sources", type=int, help="sources per fleet (default 12: splits evenly over 1..4 workers)")
    p.add_argument("--users", type=int, nargs="+", help="users per source, one fleet per value (default 500 1000)")
    p.add_argument("--minutes", type=int, help="range of every run (default 30)")
    p.add_argument("--concurrency", type=int, nargs="+", help="runs at a time (default 1 2 3 4)")
    p.add_argument("--tags", type=float, help="inbound tags per user (default: the target preset's 1.5)")
    p.add_argument("--interval", type=int, help="seconds between exporter snapshots (default: the target preset's 15)")
    p.add_argument("--workdir", help="keep certs, registries and DAGSTER_HOMEs here")
    p.add_argument("--json", help="also write the full report here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    defaults = (
        {"sources": 4, "users": [50, 100], "minutes": 10, "concurrency": [1, 2]}
        if args.quick
        else {"sources": 12, "users": [500, 1000], "minutes": 30, "concurrency": [1, 2, 3, 4]}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    os.environ.setdefault("DAGSTER_TELEMETRY_DISABLED", "1")
    began = time.perf_counter()
    report = run_curve(args)
    report["total_wall_s"] = time.perf_counter() - began
    report["command"] = "python -m bench.saturation " + " ".join(argv if argv is not None else sys.argv[1:])
    report["table"] = table(report)
    print()
    print(f"{report['machine']}; load average at start {report['load_at_start']}, at end {report['load_at_end']}; "
          f"total {report['total_wall_s']:.0f}s")  # fmt: skip
    print(report["table"], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
