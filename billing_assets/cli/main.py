"""Entry point of the `billing` command."""

from __future__ import annotations

import argparse
import sys


def _sources_sync(args) -> int:
    import dagster as dg

    from billing_assets.defs.ops.source_partitions import sync_instance
    from billing_assets.defs.resources import sources_file
    from billing_assets.registry.model import RegistryError, load_registry

    try:
        registry = load_registry(args.file or sources_file())
    except RegistryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.check:
        print(f"registry ok: {len(registry.sources)} sources")
        return 0
    changes = sync_instance(dg.DagsterInstance.get(), registry)
    print(f"exporter_sources: added {list(changes.add)}, removed {list(changes.remove)}; {len(registry.sources)} registered")
    return 0


def _demo(args) -> int:
    from billing_assets.cli.demo import run_demo

    return run_demo(minutes=args.minutes, sources=args.sources, users=args.users, workdir=args.workdir)


def _db_upgrade(args) -> int:
    from billing_assets.storage.engine import database_url, migrate, redact_url

    migrate()
    print(f"billing database at head: {redact_url(database_url())}")
    return 0


def _status(args) -> int:
    from billing_assets.cli.status import run_status

    return run_status(as_json=args.json)


def _reconcile(args) -> int:
    from billing_assets.cli.reconcile import run_reconcile

    return run_reconcile(args.sources, args.since, args.until, wait=args.wait, all_sources=args.all_sources)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="billing", description="billing_assets operator commands")
    commands = parser.add_subparsers(dest="command", required=True)

    sources = commands.add_parser("sources", help="source registry").add_subparsers(dest="action", required=True)
    sync = sources.add_parser("sync", help="validate the registry and sync the exporter_sources partitions")
    sync.add_argument("--file", help="registry file (default: $BILLING_SOURCES_FILE or sources.yaml)")
    sync.add_argument("--check", action="store_true", help="only validate, change nothing")
    sync.set_defaults(handler=_sources_sync)

    demo = commands.add_parser("demo", help="run reference exporters and bill the last minutes end to end")
    demo.add_argument("--minutes", type=int, default=30)
    demo.add_argument("--sources", type=int, default=2)
    demo.add_argument("--users", type=int, default=50)
    demo.add_argument("--workdir", help="keep everything here instead of a temporary directory")
    demo.set_defaults(handler=_demo)

    status = commands.add_parser("status", help="per-source health; exit 1 when an enabled source is over its lag budget")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)

    reconcile = commands.add_parser("reconcile", help="submit backfills that re-materialize sources' range")
    which = reconcile.add_mutually_exclusive_group(required=True)
    which.add_argument("--source", action="append", dest="sources", help="a source_id; repeat for several")
    which.add_argument("--all-sources", action="store_true", help="every enabled window-API source in the registry")
    reconcile.add_argument("--since", required=True, help="RFC3339, inclusive (floored to the minute)")
    reconcile.add_argument("--until", required=True, help="RFC3339, exclusive (floored to the minute)")
    reconcile.add_argument("--wait", action="store_true", help="block until the backfill finishes (needs a running daemon)")
    reconcile.set_defaults(handler=_reconcile)

    from billing_assets.cli.remittance import add_parser as add_remittance

    add_remittance(commands)

    db = commands.add_parser("db", help="billing database").add_subparsers(dest="action", required=True)
    db.add_parser("upgrade", help="apply migrations").set_defaults(handler=_db_upgrade)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
