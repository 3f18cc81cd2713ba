"""The control plane at fleet scale: 100 sources x 32 days of minute partitions.

Builds a Dagster instance (PostgreSQL storage, as production at this scale)
holding materialization records for the recent part of the partition space,
then times what an operator and the daemon do against it: the collection
sensor's tick, `billing status`, submitting a 2-hour reconcile backfill of
every source, and the UI's GraphQL partition-status query through a real
`dagster-webserver`. Nothing here talks to exporters: sources point at a
closed loopback port and are only ever listed, never fetched.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import yaml

PARTITION_STATUS_QUERY = """
query PartitionStatus($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      assetPartitionStatuses {
        ... on MultiPartitionStatuses {
          primaryDimensionName
          ranges {
            primaryDimStartKey
            primaryDimEndKey
            secondaryDim {
              ... on DefaultPartitionStatuses { materializedPartitions failedPartitions }
              ... on TimePartitionStatuses { ranges { startKey endKey status } }
            }
          }
        }
      }
    }
  }
}
"""

BACKFILL_MUTATION = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionSetNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _registry(path: Path, count: int, billing_start: str) -> list[str]:
    ids = [f"fleet-{index:03d}" for index in range(1, count + 1)]
    entries = [
        {
            "source_id": source_id, "node_id": f"node-{source_id}", "env": "fleet", "base_url": "https://127.0.0.1:9",
            "auth_mode": "bearer", "credential_ref": "env:BENCH_FLEET_TOKEN", "ca_bundle_ref": f"file:{path}",
            "server_name": "fleet.bench.test", "billing_start": billing_start,
        }  # fmt: skip
        for source_id in ids
    ]
    path.write_text(yaml.safe_dump({"sources": entries}, sort_keys=False))
    return ids


def _record_materializations(instance, asset_keys: list[str], source_ids: list[str], minutes: list) -> int:
    """Materialization events as a ranged run writes them (one per partition), in batches."""
    import dagster as dg
    from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
    from dagster._core.events.log import EventLogEntry

    from billing_assets.defs.partitions import partition_key

    written = 0
    for asset in asset_keys:
        for source_id in source_ids:
            batch = []
            for minute in minutes:
                key = partition_key(minute, source_id)
                materialization = dg.AssetMaterialization(asset_key=asset, partition=key, tags=key.tags_for_partition_key() if hasattr(key, "tags_for_partition_key") else None)
                event = DagsterEvent(
                    event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
                    job_name="__ASSET_JOB",
                    event_specific_data=StepMaterializationData(materialization),
                )
                batch.append(
                    EventLogEntry(
                        error_info=None, level=logging.INFO, user_message="", run_id="", timestamp=time.time(),
                        dagster_event=event,
                    )  # fmt: skip
                )
            instance.event_log_storage.store_event_batch(batch)
            written += len(batch)
    return written


def _timed(fn, *args, **kwargs) -> tuple[float, object]:
    began = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - began, value


def _graphql(url: str, query: str, variables: dict) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        return {"errors": [f"HTTP {error.code}: {error.read()[:2000]!r}"]}


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _start_webserver(env: dict, stack: ExitStack) -> str:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-m", "billing_assets.definitions", "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    stack.callback(_stop, proc)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=5):
                return url
        except OSError:
            time.sleep(0.5)
    raise SystemExit("dagster-webserver did not come up within 180 s")


def run_fleet(args) -> dict:
    from bench.common import machine

    os.environ["BENCH_FLEET_TOKEN"] = "fleet-bench-token-never-used"
    report: dict = {"machine": machine(), "sources": args.fleet_sources, "days": args.fleet_days}
    with ExitStack() as stack:
        root = Path(args.workdir) if args.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="billing-fleet-")))
        root.mkdir(parents=True, exist_ok=True)
        from billing_assets.core.timeutil import floor_minute, format_rfc3339, now_utc

        now = floor_minute(now_utc())
        start_day = (now - timedelta(days=args.fleet_days - 1)).replace(hour=0, minute=0)
        admin = args.postgres_admin_url
        if not admin:
            from billing_assets.devtools.postgres import start_postgres

            server = start_postgres()
            stack.callback(server.stop)
            dagster_url, billing_url = server.create_database("dagster"), server.create_database("billing")
        else:
            from bench.common import database_urls

            fresh = database_urls(["postgres"], root, admin, stack)
            dagster_url, billing_url = fresh("postgres"), fresh("postgres")
        from bench.common import dagster_home

        home = Path(dagster_home(root, "dagster_home", dagster_url))
        registry = root / "sources.yaml"
        source_ids = _registry(registry, args.fleet_sources, format_rfc3339(start_day))
        env = dict(
            os.environ, DAGSTER_HOME=str(home), BILLING_SOURCES_FILE=str(registry), BILLING_DATABASE_URL=billing_url,
            BILLING_PARTITIONS_START=start_day.strftime("%Y-%m-%d-%H:%M"),
        )  # fmt: skip
        os.environ.update({k: env[k] for k in ("DAGSTER_HOME", "BILLING_SOURCES_FILE", "BILLING_DATABASE_URL", "BILLING_PARTITIONS_START")})

        import dagster as dg

        from billing_assets.definitions import defs
        from billing_assets.defs.automation.source_partitions import sync_instance
        from billing_assets.defs.partitions import billing_partitions
        from billing_assets.registry.model import load_registry
        from billing_assets.storage.engine import migrate, get_engine

        migrate(get_engine(billing_url))
        instance = dg.DagsterInstance.get()
        sync_instance(instance, load_registry(registry))
        minutes_total = int((now - start_day) / timedelta(minutes=1))
        report["partitions"] = minutes_total * len(source_ids)
        materialized = [now - timedelta(minutes=m) for m in range(int(args.fleet_materialized_hours * 60), 0, -1)]
        print(f"fleet: {len(source_ids)} sources x {minutes_total:,} minutes = {report['partitions']:,} partitions; "
              f"recording {len(materialized) * len(source_ids):,} materializations per asset", flush=True)
        seconds, written = _timed(_record_materializations, instance, ["usage_minute_buckets"], source_ids, materialized)
        report["build"] = {"materializations": written, "seconds": seconds}
        print(f"  built in {seconds:.0f}s", flush=True)

        report["collection_sensor_s"] = _bench_sensor(instance)
        report["billing_status_s"] = _bench_status(env)
        report["reconcile_submit"] = _bench_reconcile_submit(source_ids, now)
        report["reconcile_cli"] = _bench_reconcile_cli(env, now)
        url = _start_webserver(env, stack)
        cold, answer = _timed(_graphql, url, PARTITION_STATUS_QUERY, {"assetKey": {"path": ["usage_minute_buckets"]}})
        warm, _ = _timed(_graphql, url, PARTITION_STATUS_QUERY, {"assetKey": {"path": ["usage_minute_buckets"]}})
        report["graphql_partition_status_s"] = {"cold": cold, "warm": warm, "errors": answer.get("errors")}
        print(f"  GraphQL partition status (usage_minute_buckets): cold {cold:.2f}s, warm {warm:.2f}s"
              + (f" ERRORS {answer['errors']}" if answer.get("errors") else ""), flush=True)
        report["partition_status_sensor"] = _bench_status_warmer(instance, url)
        report["backfill_submit_s"] = _bench_backfill(url, source_ids, now)
    return report


def _bench_status_warmer(instance, url: str) -> dict:
    """The same first page view after `partition_status_sensor` has ticked: the cache is wiped
    (as when the daily start moves), the sensor rebuilds it, then the UI query runs."""
    import dagster as dg

    from billing_assets.defs.automation.partition_status_sensor import BILLING_ASSET_KEYS, partition_status_sensor

    instance.wipe_asset_cached_status(BILLING_ASSET_KEYS)
    tick, _ = _timed(partition_status_sensor, dg.build_sensor_context(instance=instance))
    again, _ = _timed(partition_status_sensor, dg.build_sensor_context(instance=instance))
    first_view, answer = _timed(_graphql, url, PARTITION_STATUS_QUERY, {"assetKey": {"path": ["usage_minute_buckets"]}})
    print(f"  partition_status_sensor: rebuild tick {tick:.2f}s (4 assets, off the UI path), next tick {again:.2f}s; "
          f"then GraphQL partition status {first_view:.2f}s" + (f" ERRORS {answer['errors']}" if answer.get("errors") else ""),
          flush=True)
    return {"rebuild_tick_s": tick, "next_tick_s": again, "graphql_after_s": first_view}


def _bench_sensor(instance) -> float | None:
    try:
        from billing_assets.defs.automation.collection_sensor import collection_sensor
    except ImportError:
        print("  collection sensor: pending (billing_assets.defs.automation.collection_sensor not present)", flush=True)
        return None
    import dagster as dg

    from billing_assets.defs.resources import BillingStore

    context = dg.build_sensor_context(instance=instance, resources={"billing": BillingStore()})
    seconds, result = _timed(collection_sensor, context)
    requests = len(getattr(result, "run_requests", None) or []) if result is not None else 0
    print(f"  collection sensor tick: {seconds:.2f}s ({requests} run requests)", flush=True)
    return seconds


def _bench_status(env: dict) -> float | None:
    from billing_assets.cli.main import build_parser

    if "status" not in build_parser()._subparsers._group_actions[0].choices:
        print("  billing status: pending (no `status` command yet)", flush=True)
        return None
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "billing_assets.cli.main", "status"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    print(f"  billing status: {seconds:.2f}s (exit {done.returncode}, includes interpreter start)", flush=True)
    return seconds


RECONCILE_REPEAT = 3


def _bench_reconcile_cli(env: dict, now, repeat: int = RECONCILE_REPEAT) -> dict:
    """What an operator types: `billing reconcile --all-sources` over 2 hours (one process, one backfill per source).

    `repeat` times (each submits its own backfills), plus the same interpreter
    doing only the command's imports: the floor no submission change moves.
    """
    from billing_assets.core.timeutil import format_rfc3339

    end = now - timedelta(hours=4)
    command = [sys.executable, "-m", "billing_assets.cli.main", "reconcile", "--all-sources",
               "--since", format_rfc3339(end - timedelta(hours=2)), "--until", format_rfc3339(end)]  # fmt: skip
    imports = [sys.executable, "-c", "import dagster_postgres, billing_assets.cli.main, billing_assets.cli.reconcile, "
               "billing_assets.cli.instance, billing_assets.defs.automation.reconcile"]  # fmt: skip
    runs, floors = [], []
    for _ in range(repeat):
        began = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        runs.append(time.perf_counter() - began)
        submitted = sum(1 for line in done.stdout.splitlines() if line.startswith("backfill "))
        if done.returncode:
            print(f"  billing reconcile --all-sources: exit {done.returncode} {done.stderr[-500:]}", flush=True)
        began = time.perf_counter()
        subprocess.run(imports, env=env, check=True)
        floors.append(time.perf_counter() - began)
    print(f"  billing reconcile --all-sources (2 h) x{repeat}: {min(runs):.2f}-{max(runs):.2f}s, {submitted} backfills each"
          f" (includes interpreter start and imports: {min(floors):.2f}-{max(floors):.2f}s)", flush=True)
    return {"runs_s": runs, "imports_s": floors, "backfills": submitted}


def _bench_reconcile_submit(source_ids: list[str], now, repeat: int = RECONCILE_REPEAT) -> dict:
    """`billing reconcile`'s path in process, 2 hours of every source: check, build, submit (4 at a time on PostgreSQL).

    On a fresh instance each time: `submit_backfills` pools its storages' connections,
    which must not change what the later measurements see.
    """
    import dagster as dg

    from billing_assets.defs.automation.reconcile import reconcile_backfill, require_registered, submit_backfills

    end = now - timedelta(hours=1)
    build, submit = [], []
    for _ in range(repeat):
        instance = dg.DagsterInstance.get()
        began = time.perf_counter()
        known = require_registered(instance, source_ids)
        built = {source_id: reconcile_backfill(known, source_id, end - timedelta(hours=2), end) for source_id in source_ids}
        build.append(time.perf_counter() - began)
        seconds, _ = _timed(submit_backfills, instance, built)
        submit.append(seconds)
    print(f"  reconcile in process ({len(source_ids)} sources x 2 h) x{repeat}: check+build {min(build):.2f}-{max(build):.2f}s, "
          f"submit {min(submit):.2f}-{max(submit):.2f}s", flush=True)
    return {"build_s": build, "submit_s": submit}


def run_reconcile_only(sources: int, days: int, repeat: int) -> dict:
    """Only the reconcile measurements, on the fleet's instance without its materializations or webserver:

        .venv/bin/python -m bench.fleet --reconcile-only [--sources 100] [--days 32] [--repeat 3]
    """
    from bench.common import dagster_home, machine
    from billing_assets.core.timeutil import floor_minute, format_rfc3339, now_utc
    from billing_assets.devtools.postgres import start_postgres

    os.environ["BENCH_FLEET_TOKEN"] = "fleet-bench-token-never-used"
    report: dict = {"machine": machine(), "sources": sources, "days": days}
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="billing-fleet-reconcile-")))
        now = floor_minute(now_utc())
        start_day = (now - timedelta(days=days - 1)).replace(hour=0, minute=0)
        server = start_postgres()
        stack.callback(server.stop)
        home = dagster_home(root, "dagster_home", server.create_database("dagster"))
        registry = root / "sources.yaml"
        source_ids = _registry(registry, sources, format_rfc3339(start_day))
        env = dict(
            os.environ, DAGSTER_HOME=home, BILLING_SOURCES_FILE=str(registry), BILLING_DATABASE_URL=server.create_database("billing"),
            BILLING_PARTITIONS_START=start_day.strftime("%Y-%m-%d-%H:%M"),
        )  # fmt: skip
        os.environ.update({k: env[k] for k in ("DAGSTER_HOME", "BILLING_SOURCES_FILE", "BILLING_DATABASE_URL", "BILLING_PARTITIONS_START")})
        import dagster as dg

        from billing_assets.defs.automation.source_partitions import sync_instance
        from billing_assets.registry.model import load_registry
        from billing_assets.storage.engine import get_engine, migrate

        migrate(get_engine(env["BILLING_DATABASE_URL"]))
        sync_instance(dg.DagsterInstance.get(), load_registry(registry))
        print(f"fleet reconcile: {sources} sources, {days} days of minute partitions, PostgreSQL instance storage", flush=True)
        report["reconcile_submit"] = _bench_reconcile_submit(source_ids, now, repeat)
        report["reconcile_cli"] = _bench_reconcile_cli(env, now, repeat)
    return report


def _bench_backfill(url: str, source_ids: list[str], now) -> float:
    """Reconcile = a partition backfill of 2 hours x every source, submitted like the UI does."""
    from billing_assets.defs.runs import BILLING_ASSETS
    from billing_assets.defs.partitions import partition_key

    end = now - timedelta(hours=1)
    minutes = [end - timedelta(minutes=m) for m in range(120, 0, -1)]
    names = [str(partition_key(minute, source_id)) for source_id in source_ids for minute in minutes]
    params = {
        "partitionNames": names,
        "assetSelection": [{"path": [asset]} for asset in BILLING_ASSETS],
        "fromFailure": False,
    }
    seconds, answer = _timed(_graphql, url, BACKFILL_MUTATION, {"params": params})
    outcome = (answer.get("data") or {}).get("launchPartitionBackfill") or answer.get("errors")
    print(f"  reconcile backfill submit ({len(names):,} partitions x {len(BILLING_ASSETS)} assets): {seconds:.2f}s -> {outcome}", flush=True)
    return seconds


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="bench.fleet measurements on their own (the full preset: bench.run --preset fleet)")
    parser.add_argument("--reconcile-only", action="store_true", required=True, help="only `billing reconcile --all-sources`")
    parser.add_argument("--sources", type=int, default=100)
    parser.add_argument("--days", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=RECONCILE_REPEAT)
    options = parser.parse_args()
    print(json.dumps(run_reconcile_only(options.sources, options.days, options.repeat), indent=2))
