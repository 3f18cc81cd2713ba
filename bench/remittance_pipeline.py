"""One hour of 100,000 accounts x 2 metrics through the remittance pipeline:
plan, then deliver to the reference receiver (HTTPS) and to CSV files, with
the database in the loop (claims, attempts, manifest), on PostgreSQL.

    .venv/bin/python -m bench.remittance_pipeline [--accounts 100000] [--in-flight 16]

`bench.remittance_delivery` measures the client and the file writer alone;
this measures what the `remittance` asset does around them: leased claims in
chunks, streaming sends, outcomes written every 500 records, the CSV
protocol's three steps. hourly_usage is filled directly (its own cost is
bench.hourly_usage's).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.remittance_pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--in-process", action="store_true", help="receiver in this process (shares the GIL)")
    args = parser.parse_args(argv)

    from bench.remittance_delivery import CREDENTIAL_ENV, SERVER_NAME, Receiver
    from billing_assets.accounts.model import parse_accounts
    from billing_assets.pipeline.remittance import DeliverySettings, deliver, plan_hours
    from billing_assets.storage.engine import get_engine, migrate
    from billing_assets_tests.support.pg import start_postgres

    hour = datetime(2026, 11, 22, 10, tzinfo=timezone.utc)
    server = start_postgres()
    with tempfile.TemporaryDirectory(prefix="bench-remit-") as tmp:
        root = Path(tmp)
        receiver = Receiver(root, args.in_process)
        try:
            engine = migrate(get_engine(server.create_database("bench_remit")))
            with engine.begin() as connection:
                connection.exec_driver_sql(
                    "INSERT INTO hourly_usage (account_id, metric, hour, quantity, updated_at) "
                    f"SELECT 'acct-' || a, m, TIMESTAMPTZ '{hour.isoformat()}', 1000 + a, now() "
                    f"FROM generate_series(1, {args.accounts}) a, (VALUES ('uplink_bytes'), ('downlink_bytes')) v(m)"
                )
            started = time.perf_counter()
            targets = {
                    "kb": {"kind": "killbill", "base_url": receiver.url, "auth_mode": "bearer", "credential_ref": f"env:{CREDENTIAL_ENV}",
                           "ca_bundle_ref": f"file:{receiver.ca_cert}", "server_name": SERVER_NAME, "request_timeout": "30s",
                           "max_in_flight": args.in_flight},
                    "files": {"kind": "csv", "directory": str(root / "csv")},
            }

            def accounts_for(names):
                return parse_accounts({
                    "targets": {name: targets[name] for name in names},
                    "accounts": [{"account_id": f"acct-{a}", "subscription_key": f"sub-{a}", "targets": list(names)}
                                 for a in range(1, args.accounts + 1)],
                }, "bench accounts")

            accounts = accounts_for(["kb", "files"])
            print(f"accounts file of {args.accounts:,} accounts validated in {time.perf_counter() - started:.1f}s")
            started = time.perf_counter()
            stats = plan_hours(engine, accounts, [hour], datetime.now(timezone.utc))
            print(f"plan: {stats.records:,} records in {time.perf_counter() - started:.1f}s, peak RSS {peak_rss_mib():.0f} MiB")
            for name in ("files", "kb"):
                only = accounts_for([name])
                started = time.perf_counter()
                result = deliver(engine, only, f"bench-{name}", lambda: datetime.now(timezone.utc), DeliverySettings())
                seconds = time.perf_counter() - started
                print(f"deliver {name}: {result.accepted:,} accepted, {result.retryable} retryable, {result.refused} refused "
                      f"in {seconds:.1f}s = {result.accepted / seconds:,.0f} records/s; peak RSS {peak_rss_mib():.0f} MiB")
            print(f"receiver counted {receiver.accepted():,} records")
        finally:
            receiver.stop()
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
