"""The four billing steps of one source-hour timed alone, without Dagster.

    .venv/bin/python -m bench.steps --users 1000 --minutes 60 [--db sqlite] [--profile]

Where `bench.run` says how fast the whole path is, this says which step the
time goes to: it starts one reference exporter and a throwaway PostgreSQL (or
a SQLite file) and calls fetch_slice, dedup_slice, bucket_slice and
charge_slice in turn. `--profile` adds a pyinstrument profile of all four.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

from bench.exporters import ExporterProcesses, Shape


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.steps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--tags", type=float, default=1.5)
    parser.add_argument("--interval", type=int, default=15)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--postgres-admin-url")
    parser.add_argument("--profile", action="store_true", help="pyinstrument profile of the four steps")
    args = parser.parse_args(argv)

    from bench.common import database_urls
    from billing_assets.core.pricing import DEFAULT_PRICING
    from billing_assets.core.timeutil import floor_minute, now_utc
    from billing_assets.pipeline.bucket import bucket_slice
    from billing_assets.pipeline.charge import charge_slice
    from billing_assets.pipeline.dedup import dedup_slice
    from billing_assets.pipeline.fetch import fetch_slice
    from billing_assets.pipeline.slices import Slice
    from billing_assets.registry.model import load_registry
    from billing_assets.storage.engine import get_engine, migrate

    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="billing-steps-")))
        end = floor_minute(now_utc()) - timedelta(minutes=5)
        start = end - timedelta(minutes=args.minutes)
        exporters = ExporterProcesses(root)
        stack.callback(exporters.stop)
        exporters.start(Shape(1, args.users, args.tags, args.interval, args.minutes), billing_start=start - timedelta(days=1))
        source = load_registry(exporters.write_registry(root / "sources.yaml")).sources[0]
        engine = migrate(get_engine(database_urls([args.db], root, args.postgres_admin_url, stack)(args.db)))
        work = Slice(source.source_id, start, end)
        profiler = None
        if args.profile:
            from pyinstrument import Profiler

            profiler = Profiler()
            profiler.start()
        steps = [
            ("fetch", lambda: fetch_slice(engine, source, work)),
            ("dedup", lambda: dedup_slice(engine, source, work)),
            ("bucket", lambda: bucket_slice(engine, source, work)),
            ("ledger", lambda: charge_slice(engine, source, work, DEFAULT_PRICING)),
        ]
        total, samples = 0.0, 0
        for name, step in steps:
            began = time.perf_counter()
            stats = step()
            seconds = time.perf_counter() - began
            total += seconds
            samples = samples or stats.samples  # fetch's count: every sample delivered for the range
            print(f"{name:7s} {seconds:6.2f}s  {stats}", flush=True)
        print(f"total   {total:6.2f}s  = {samples / total:,.0f} samples/s for {samples:,} samples on {args.db}")
        if profiler is not None:
            profiler.stop()
            print(profiler.output_text(unicode=False, show_all=False))
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
