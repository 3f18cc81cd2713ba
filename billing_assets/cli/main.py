"""Entry point of the `billing` command."""

from __future__ import annotations

import argparse
import sys


def _load_registry(args):
    """The registry the command names (`--file`) or the environment's; None after printing why not."""
    from billing_assets.registry.model import RegistryError, load_registry
    from billing_assets.settings import Settings

    try:
        return load_registry(args.file or Settings.from_env().sources_file)
    except RegistryError as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def _sources_sync(args) -> int:
    from billing_assets.cli.instance import InstanceError, dagster_instance
    from billing_assets.cli.sources import offline_problems
    from billing_assets.defs.automation.source_partitions import sync_instance

    registry = _load_registry(args)
    if registry is None:
        return 2
    if args.check:
        problems = offline_problems(registry)
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        if problems:
            return 2
        print(f"registry ok: {len(registry.sources)} sources (CA bundles load, credentials resolve; `billing sources probe` tries the network)")
        return 0
    try:
        instance = dagster_instance()
    except InstanceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    changes = sync_instance(instance, registry)
    print(f"exporter_sources: added {list(changes.add)}, removed {list(changes.remove)}; {len(registry.sources)} registered")
    if changes.held:
        print(f"exporter_sources: kept {list(changes.held)} (removed from the registry) until their queued or running runs end; sync again then")
    return 0


def _sources_probe(args) -> int:
    from billing_assets.cli.sources import probe

    registry = _load_registry(args)
    if registry is None:
        return 2
    results = probe(registry)
    for source_id, ok, detail in results:
        print(f"{source_id:<24} {'ok  ' if ok else 'FAIL'} {detail}")
    failed = [source_id for source_id, ok, _ in results if not ok]
    print(f"\n{len(results)} probed, {len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _demo(args) -> int:
    from billing_assets.cli.demo import run_demo

    return run_demo(
        minutes=args.minutes, sources=args.sources, users=args.users, workdir=args.workdir, ui=args.ui, host=args.host, port=args.port
    )


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


def _quarantine_list(args) -> int:
    from billing_assets.cli.quarantine import run_list

    return run_list(args.source, args.released, args.json)


def _quarantine_release(args) -> int:
    from billing_assets.cli.quarantine import run_release

    return run_release(args.ids, args.by, args.reason)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="billing", description="billing_assets operator commands")
    commands = parser.add_subparsers(dest="command", required=True)

    sources = commands.add_parser("sources", help="source registry").add_subparsers(dest="action", required=True)
    sync = sources.add_parser("sync", help="validate the registry and sync the exporter_sources partitions")
    sync.add_argument("--file", help="registry file (default: $BILLING_SOURCES_FILE or sources.yaml)")
    sync.add_argument("--check", action="store_true", help="only validate (registry, CA files, credentials), change nothing")
    sync.set_defaults(handler=_sources_sync)
    probe = sources.add_parser("probe", help="one TLS handshake and authenticated request per enabled source; exit 1 if any fails")
    probe.add_argument("--file", help="registry file (default: $BILLING_SOURCES_FILE or sources.yaml)")
    probe.set_defaults(handler=_sources_probe)

    demo = commands.add_parser("demo", help="run reference exporters and bill the last minutes end to end")
    demo.add_argument("--minutes", type=int, default=30)
    demo.add_argument("--sources", type=int, default=2)
    demo.add_argument("--users", type=int, default=50)
    demo.add_argument("--workdir", help="keep everything here instead of a temporary directory (with --ui: resume from it)")
    demo.add_argument(
        "--ui", action="store_true",
        help="then keep the exporters running and serve the Dagster UI with its daemon (sensors on) until Ctrl-C",
    )
    demo.add_argument("--host", default="127.0.0.1", help="with --ui: the UI's address (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=3000, help="with --ui: the UI's port (default 3000)")
    demo.set_defaults(handler=_demo)

    status = commands.add_parser("status", help="per-source health; exit 1 when an enabled source is over its lag budget")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)

    reconcile = commands.add_parser(
        "reconcile", help="submit backfills that re-materialize sources' range",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  billing reconcile --source eu-1 --since 2026-11-21T10:00:00Z --until 2026-11-21T12:00:00Z\n"
            "  billing reconcile --all-sources --since 2026-11-21T00:00:00Z --until 2026-11-22T00:00:00Z --wait\n"
            "times are RFC3339 with a zone (Z or +01:00); --since is inclusive, --until exclusive"
        ),
    )
    which = reconcile.add_mutually_exclusive_group(required=True)
    which.add_argument("--source", action="append", dest="sources", help="a source_id; repeat for several")
    which.add_argument("--all-sources", action="store_true", help="every enabled window-API source in the registry")
    reconcile.add_argument("--since", required=True, help="RFC3339, inclusive (floored to the minute)")
    reconcile.add_argument("--until", required=True, help="RFC3339, exclusive (floored to the minute)")
    reconcile.add_argument("--wait", action="store_true", help="block until the backfill finishes (needs a running daemon)")
    reconcile.set_defaults(handler=_reconcile)

    quarantine = commands.add_parser(
        "quarantine", help="implausible deltas held out of billing (above a source's max_bytes_per_second)"
    ).add_subparsers(dest="action", required=True)
    held = quarantine.add_parser("list", help="held deltas, newest first")
    held.add_argument("--source", help="only this source_id")
    held.add_argument("--released", action="store_true", help="list released holds instead")
    held.add_argument("--json", action="store_true", help="machine-readable output")
    held.set_defaults(handler=_quarantine_list)
    release = quarantine.add_parser(
        "release", help="bill held deltas (all or none); prints the reconcile that bills them",
        epilog="example: billing quarantine release --id 12 --id 13 --by alice --reason 'link upgrade, confirmed with NOC'",
    )
    release.add_argument("--id", type=int, action="append", dest="ids", required=True, help="a hold id; repeat for several")
    release.add_argument("--by", required=True, help="who decides (recorded)")
    release.add_argument("--reason", required=True, help="why (recorded)")
    release.set_defaults(handler=_quarantine_release)

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
