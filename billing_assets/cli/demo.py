"""`billing demo`: real exporters over HTTPS into a real ledger, nothing to install.

Two reference exporters (one bearer + pinned CA, one mTLS) run on loopback
with freshly generated certificates whose names differ from the address
dialled, so the demo exercises the same trust path as production. Everything
lives in a temporary directory: SQLite billing database, DAGSTER_HOME,
registry, certificates.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import yaml

from billing_assets.core.timeutil import MINUTE, floor_minute, format_rfc3339, now_utc


def _sources(workdir: Path, count: int, users: int, stack: ExitStack) -> list[dict]:
    from billing_assets.exporter import ExporterServer, ServerTls, TrafficShape, generate_tls_material

    entries = []
    for index in range(count):
        source_id = f"demo-{index + 1}"
        server_name = f"exporter-{index + 1}.demo.test"
        tls = generate_tls_material(workdir / "tls" / source_id, server_names=(server_name,))
        shape = TrafficShape(seed=index + 1, users=users, node_id=f"node-{index + 1}", env="demo", source_id=source_id)
        mtls = index % 2 == 1
        entry = {
            "source_id": source_id,
            "node_id": shape.node_id,
            "env": shape.env,
            "enabled": True,
            "server_name": server_name,
            "ca_bundle_ref": f"file:{tls.ca_cert}",
            "collect_interval": "60s",
            "request_timeout": "10s",
        }
        if mtls:
            server = ExporterServer(shape, ServerTls(tls.server_cert, tls.server_key, tls.client_ca), auth="mtls")
            entry.update(auth_mode="mtls", credential_ref=f"file:{tls.client_cert_key}")
        else:
            token = secrets.token_urlsafe(24)
            variable = f"BILLING_DEMO_TOKEN_{index + 1}"
            os.environ[variable] = token
            server = ExporterServer(shape, ServerTls(tls.server_cert, tls.server_key), auth="bearer", bearer_token=token)
            entry.update(auth_mode="bearer", credential_ref=f"env:{variable}")
        stack.enter_context(server)
        entry["base_url"] = server.url
        entries.append(entry)
    return entries


def run_demo(minutes: int = 30, sources: int = 2, users: int = 50, workdir: str | None = None) -> int:
    started = time.monotonic()
    with ExitStack() as stack:
        root = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="billing-demo-")))
        root.mkdir(parents=True, exist_ok=True)
        dagster_home = root / "dagster_home"
        dagster_home.mkdir(exist_ok=True)
        (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        end = floor_minute(now_utc())
        start = end - minutes * MINUTE
        entries = _sources(root, sources, users, stack)
        for entry in entries:
            entry["billing_start"] = format_rfc3339(start)
        registry_file = root / "sources.yaml"
        registry_file.write_text(yaml.safe_dump({"sources": entries}, sort_keys=False))
        os.environ.update(
            BILLING_SOURCES_FILE=str(registry_file),
            BILLING_DATABASE_URL=f"sqlite:///{root / 'billing.sqlite'}",
            DAGSTER_HOME=str(dagster_home),
        )
        code = _materialize_and_report(entries, start, end, started)
        if code == 0:
            from billing_assets.cli.demo_remittance import remit_demo

            code = remit_demo(root, sources, users, start, end)
            print(f"remittance done in {time.monotonic() - started:.1f}s total")
        return code


def _materialize_and_report(entries: list[dict], start, end, started: float) -> int:
    import dagster as dg

    from billing_assets.defs.runs import materialize_range
    from billing_assets.cli.summary import human_bytes, source_totals
    from billing_assets.defs.automation.source_partitions import sync_instance
    from billing_assets.defs.resources import BillingStore
    from billing_assets.definitions import defs
    from billing_assets.registry.model import load_registry

    store = BillingStore()
    instance = dg.DagsterInstance.get()
    changes = sync_instance(instance, load_registry(os.environ["BILLING_SOURCES_FILE"]))
    print(f"registry: {len(entries)} sources, partitions added {list(changes.add)}")
    print(f"window:   [{format_rfc3339(start)}, {format_rfc3339(end)}), one Dagster run per source")
    for entry in entries:
        result = materialize_range(defs, instance, entry["source_id"], start, end, raise_on_error=False, log_level="WARNING")
        state = "ok" if result.success else "FAILED"
        print(f"  run {result.run_id[:8]} {entry['source_id']} ({entry['auth_mode']}, {entry['base_url']} as {entry['server_name']}): {state}")
        if not result.success:
            return 1
    engine = store.engine()
    first = entries[0]["source_id"]
    before = source_totals(engine, first, start, end)["ledger_entries"]
    replay = materialize_range(defs, instance, first, start, end, raise_on_error=False, log_level="WARNING")
    after = source_totals(engine, first, start, end)["ledger_entries"]
    minutes = int((end - start) // MINUTE)
    print()
    print(f"{'source':<10} {'windows':>7} {'samples':>8} {'buckets':>8} {'bytes':>11} {'entries':>8} {'amount':>16}")
    for entry in entries:
        totals = source_totals(engine, entry["source_id"], start, end)
        print(
            f"{entry['source_id']:<10} {minutes:>7} {totals['samples']:>8} {totals['buckets']:>8} "
            f"{human_bytes(totals['bytes']):>11} {totals['ledger_entries']:>8} {totals['amount']:>12} USD"
        )
    print()
    verdict = "no double charge" if after == before else "LEDGER CHANGED ON REPLAY"
    print(f"replayed {first}: run {'ok' if replay.success else 'FAILED'}, ledger entries {before} -> {after} ({verdict})")
    print(f"done in {time.monotonic() - started:.1f}s; dagster home {os.environ['DAGSTER_HOME']}")
    sys.stdout.flush()
    return 0 if replay.success and after == before else 1
