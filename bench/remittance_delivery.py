"""One hour of remittance for 100,000 accounts x 2 metrics: Kill Bill over HTTPS
to the reference receiver, and the CSV target, measured.

    .venv/bin/python -m bench.remittance_delivery                  # full: 200,000 records
    .venv/bin/python -m bench.remittance_delivery --records 5000   # smoke
    .venv/bin/python -m bench.remittance_delivery --tuning         # records/s per max_in_flight

The receiver runs as a subprocess by default (`--in-process` to share the
GIL with the client), because on 2 cores a receiver in the same process would
measure the receiver's Python as much as ours. Records are generated lazily
and streamed through `send_many`, so peak RSS shows what delivery holds, not
what a list of 200,000 records would.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from billing_assets.delivery.csv_files import CsvLine, file_name_for, write_batch_file
from billing_assets.delivery.killbill import KillBillClient
from billing_assets.delivery.outcome import METRICS, UsageRecord
from billing_assets.delivery.targets import CsvTarget, KillBillTarget
from billing_assets.receiver.admin import ReceiverAdmin

HOUR = datetime(2026, 11, 22, 10, tzinfo=timezone.utc)
SERVER_NAME = "receiver.bench.test"
CREDENTIAL_ENV = "BENCH_RECEIVER_TOKEN"


def records(count: int, run: str) -> Iterator[UsageRecord]:
    for n in range(count):
        account = f"acct-{n // 2:06d}"
        yield UsageRecord("kb", account, f"{account}-traffic", METRICS[n % 2], HOUR, 1_000_000 + n, f"{run}-{n}")


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def cpu_s(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class Receiver:
    """The reference receiver, as a subprocess or in this process."""

    def __init__(self, root: Path, in_process: bool) -> None:
        self.in_process = in_process
        token = secrets.token_urlsafe(24)
        os.environ[CREDENTIAL_ENV] = token
        self.token = token
        certs = root / "certs"
        if in_process:
            from billing_assets.exporter.certs import generate_tls_material
            from billing_assets.exporter.server import ServerTls
            from billing_assets.receiver.server import ReceiverServer

            material = generate_tls_material(certs, server_names=(SERVER_NAME,))
            self.ca_cert = material.ca_cert
            self.server = ReceiverServer(ServerTls(material.server_cert, material.server_key), credential=token).start()
            self.url = self.server.url
            return
        self.process = subprocess.Popen(
            [sys.executable, "-m", "billing_assets.receiver", "--port", "0", "--credential-env", CREDENTIAL_ENV,
             "--generate-certs", str(certs), "--server-name", SERVER_NAME],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ca_cert = self.process.stdout.readline().strip().removeprefix("ca_cert=")
        self.url = self.process.stdout.readline().split(" listening on ")[1].split(" ")[0]

    def target(self, max_in_flight: int) -> KillBillTarget:
        return KillBillTarget(
            kind="killbill", base_url=self.url, auth_mode="bearer", credential_ref=f"env:{CREDENTIAL_ENV}",
            ca_bundle_ref=f"file:{self.ca_cert}", server_name=SERVER_NAME, request_timeout="30s", max_in_flight=max_in_flight,
        )

    def accepted(self) -> int:
        with ReceiverAdmin(self.url, self.ca_cert, SERVER_NAME, "bearer", self.token, timeout_s=60) as admin:
            return admin.accepted(totals_only=True)["accepted"]

    def stop(self) -> tuple[float, float] | None:
        """The receiver's peak RSS and CPU seconds (subprocess only)."""
        if self.in_process:
            self.server.stop()
            return None
        self.process.terminate()
        self.process.wait(timeout=30)
        return peak_rss_mib(resource.RUSAGE_CHILDREN), cpu_s(resource.RUSAGE_CHILDREN)


def bench_killbill(receiver: Receiver, count: int, in_flight: int, run: str) -> dict:
    statuses: Counter[str] = Counter()
    with KillBillClient(receiver.target(in_flight), name="bench") as client:
        started, cpu = time.perf_counter(), cpu_s()
        for _, outcome in client.send_many(records(count, run)):
            statuses[outcome.status] += 1
        elapsed, cpu = time.perf_counter() - started, cpu_s() - cpu
    return {"records": count, "seconds": elapsed, "per_s": count / elapsed, "statuses": dict(statuses),
            "client_cpu_us": cpu / count * 1e6}


def csv_lines(count: int) -> list[CsvLine]:
    lines = []
    for n in range(count):
        account = f"acct-{n // 2:06d}"
        lines.append(CsvLine(account, f"{account}-traffic", METRICS[n % 2], HOUR, 1_000_000 + n, f"csv-{n}", 0))
    return lines


def bench_csv(directory: Path, count: int) -> dict:
    """Times `write_batch_file` alone: the lines are the caller's rows, built
    beforehand (a file is sorted as a whole, so it holds them all anyway)."""
    target = CsvTarget(kind="csv", directory=directory)
    started = time.perf_counter()
    lines = csv_lines(count)
    built = time.perf_counter() - started
    started = time.perf_counter()
    written = write_batch_file(target, file_name_for(HOUR, 1), lines)
    elapsed = time.perf_counter() - started
    return {"lines": written.line_count, "seconds": elapsed, "per_s": written.line_count / elapsed,
            "bytes": written.path.stat().st_size, "build_s": built}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.remittance_delivery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000, help="records (accounts x 2 metrics); default one hour of 100,000 accounts")
    parser.add_argument("--in-flight", type=int, default=8, help="max_in_flight of the Kill Bill target")
    parser.add_argument("--in-process", action="store_true", help="run the receiver in this process (shares the GIL)")
    parser.add_argument("--tuning", action="store_true", help="records/s for max_in_flight 1, 2, 4, 8, 16, 32 (20,000 records each unless --records)")
    parser.add_argument("--skip-csv", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-remit-") as tmp:
        root = Path(tmp)
        receiver = Receiver(root, args.in_process)
        where = "in this process (shared GIL)" if args.in_process else "in a subprocess"
        print(f"receiver {where} at {receiver.url}; {os.cpu_count()} CPUs (shared with other work)", flush=True)
        try:
            if args.tuning:
                count = args.records if args.records != 200_000 else 20_000
                print("| max_in_flight | records | seconds | records/s | client CPU per record |\n|---|---|---|---|---|")
                for n, in_flight in enumerate((1, 2, 4, 8, 16, 32)):
                    result = bench_killbill(receiver, count, in_flight, f"tune{n}")
                    print(f"| {in_flight} | {count:,} | {result['seconds']:.1f} | {result['per_s']:,.0f} | {result['client_cpu_us']:.0f} µs |", flush=True)
            else:
                result = bench_killbill(receiver, args.records, args.in_flight, "kb")
                delivery_rss = peak_rss_mib()  # before the check below downloads every total as JSON
                accepted = receiver.accepted()
                print(
                    f"killbill: {result['records']:,} records in {result['seconds']:.1f} s = {result['per_s']:,.0f} records/s "
                    f"(max_in_flight {args.in_flight}, one httpcore pool (httpx engine), HTTP/1.1 keep-alive, one request per record); "
                    f"outcomes {result['statuses']}; receiver accepted {accepted:,}; "
                    f"client CPU {result['client_cpu_us']:.0f} µs/record; client peak RSS {delivery_rss:.0f} MiB while delivering "
                    f"({peak_rss_mib():.0f} MiB after fetching the receiver's totals to check them)",
                    flush=True,
                )
                if accepted != args.records or result["statuses"] != {"accepted": args.records}:
                    print("MISMATCH: not every record was accepted exactly once", flush=True)
                    return 1
        finally:
            receiver_usage = receiver.stop()
        if receiver_usage is not None:
            rss, cpu = receiver_usage
            print(f"receiver: peak RSS {rss:.0f} MiB (it keeps every accepted record in memory), CPU {cpu:.1f} s in total")
        if not args.skip_csv and not args.tuning:
            result = bench_csv(root / "csv", args.records)
            print(
                f"csv: {result['lines']:,} lines ({result['bytes'] / 2**20:.1f} MiB) in {result['seconds']:.2f} s = "
                f"{result['per_s']:,.0f} lines/s (sorted, fsynced, linked; building the {result['lines']:,} input lines took "
                f"another {result['build_s']:.2f} s); peak RSS now {peak_rss_mib():.0f} MiB",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
