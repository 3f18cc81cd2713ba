"""`hourly_usage` of one hour on PostgreSQL: the set-based derivation, timed.

    .venv/bin/python -m bench.hourly_usage [--sources 10] [--users 10000] [--postgres-admin-url URL]

Fills `billing_ledger` with one hour of every user on every source (one
entry per user, source and minute: 10 x 10,000 x 60 = 6 M rows by default,
generated server-side), builds accounts of two users each with one in ten
users moving account at half past, and times `derive_hour` (temp table of
memberships + one statement) and the plan of one target. Goal: derivation
< 5 s. The same users on every source is the realistic worst case for the
per-(user, minute) aggregation.
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import datetime, timedelta, timezone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.hourly_usage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=10)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--postgres-admin-url", help="an existing server (default: start a throwaway one)")
    args = parser.parse_args(argv)

    from billing_assets.accounts.model import parse_accounts
    from billing_assets.pipeline.remittance import plan_hours
    from billing_assets.storage import downstream as store
    from billing_assets.storage.engine import get_engine, migrate

    server = None
    if args.postgres_admin_url:
        import psycopg

        name = f"bench_hourly_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.postgres_admin_url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = args.postgres_admin_url.rsplit("/", 1)[0] + f"/{name}"
    else:
        from billing_assets_tests.support.pg import start_postgres

        server = start_postgres()
        url = server.create_database("bench_hourly")
    try:
        engine = migrate(get_engine(url))
        hour = datetime(2026, 11, 22, 10, tzinfo=timezone.utc)
        started = time.perf_counter()
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO billing_ledger (node_id, env, uuid, inbound_tag, bucket_start, entry_seq, source_id, email, "
                "uplink_bytes, downlink_bytes, amount, amount_nanos, currency, plan, entry_kind, created_at) "
                "SELECT 'node-' || s, 'bench', md5(u::text)::uuid::text, 'tag', "
                f"TIMESTAMPTZ '{hour.isoformat()}' + m * INTERVAL '1 minute', 1, 'src-' || s, 'u@example.test', "
                "mod(u * 7 + m * 13 + s, 100000), mod(u * 11 + m * 3 + s, 1000000), 0, 0, 'USD', 'standard', 'charge', now() "
                f"FROM generate_series(1, {args.sources}) s, generate_series(1, {args.users}) u, generate_series(0, 59) m"
            )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            # What autovacuum does to a settled hour: statistics and hint bits (the
            # first read of fresh rows otherwise writes every page once).
            connection.exec_driver_sql("VACUUM (ANALYZE) billing_ledger")
            rows = connection.exec_driver_sql("SELECT COUNT(*) FROM billing_ledger").scalar_one()
        print(f"ledger: {rows:,} entries ({args.sources} sources x {args.users:,} users x 60 min) in {time.perf_counter() - started:.1f}s")

        users = [str(uuid.UUID(__import__("hashlib").md5(str(u).encode()).hexdigest())) for u in range(1, args.users + 1)]
        move = (hour + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
        accounts = []
        for index in range(0, len(users), 2):
            members = [{"uuid": u} for u in users[index:index + 2]]
            accounts.append({"account_id": f"acct-{index // 2}", "subscription_key": f"sub-{index // 2}", "targets": ["files"], "users": members})
        for index in range(0, len(users), 10):  # one user in ten moves to the next account at :30
            target = accounts[(index // 2 + 1) % len(accounts)]
            target["users"].append({"uuid": users[index], "since": move})
        parsed = parse_accounts({"targets": {"files": {"kind": "csv", "directory": "/tmp/bench-hourly-unused"}}, "accounts": accounts},
                                "bench accounts", check_credentials=False)
        sources = [f"src-{s}" for s in range(1, args.sources + 1)]
        now = datetime.now(timezone.utc)
        timings = []
        for attempt in range(3):
            started = time.perf_counter()
            with engine.begin() as connection:
                derived = store.derive_hour(connection, hour, parsed.memberships.intervals(), sources, now)
            timings.append(time.perf_counter() - started)
        print(f"derive_hour: {derived.accounts:,} accounts, {derived.assigned_bytes:,} bytes; "
              f"seconds per run {', '.join(f'{t:.2f}' for t in timings)} (goal < 5 s)")
        started = time.perf_counter()
        stats = plan_hours(engine, parsed, [hour], now)
        print(f"plan_hours (one target): {stats.records:,} records in {time.perf_counter() - started:.2f}s")
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
