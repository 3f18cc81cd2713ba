"""Throughput of the window endpoint as an httpx client sees it, so a
pipeline benchmark can check the exporter is not its bottleneck.

The exporter runs as a separate process (the `billing-exporter` CLI) so that
client and server do not share one GIL, exactly as in a real deployment.

    python -m billing_assets.exporter.bench --users 1000 --hours 1 --limit 100
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

import httpx


def _start_exporter(args: argparse.Namespace, certs_dir: str, token: str) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable, "-m", "billing_assets.exporter", "--port", "0", "--generate-certs", certs_dir,
        "--token-env", "BENCH_EXPORTER_TOKEN", "--users", str(args.users),
        "--tags-per-user", str(args.tags_per_user), "--interval", str(args.interval),
    ]  # fmt: skip
    env = dict(os.environ, BENCH_EXPORTER_TOKEN=token)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "listening on" in line:
            return proc, line.split("listening on ")[1].split()[0]
    raise RuntimeError("exporter exited before listening")


def _fetch(client: httpx.Client, url: str, since: datetime, until: datetime, limit: int, parse: bool) -> tuple[int, int, int]:
    """Fetch the whole window; returns (samples, items, body bytes)."""
    samples = items = size = 0
    cursor = None
    while True:
        params = {"since": since.isoformat(), "until": until.isoformat(), "limit": limit}
        if cursor:
            params["cursor"] = cursor
        response = client.get(f"{url}/v1/snapshots/window", params=params, extensions={"sni_hostname": "exporter.test"})
        response.raise_for_status()
        size += len(response.content)
        if parse:
            body = json.loads(response.content)
            items += len(body["items"])
            samples += sum(len(item["samples"]) for item in body["items"])
            has_more, cursor = body["has_more"], body["next_cursor"]
        else:
            # Counting without a full parse: the envelope tail holds the cursor.
            samples += response.content.count(b'"uplink_bytes_total"')
            items += response.content.count(b'"collected_at"')
            tail = json.loads(b"{" + response.content[response.content.rindex(b'"next_cursor"') :])
            has_more, cursor = tail["has_more"], tail["next_cursor"]
        if not has_more:
            return samples, items, size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="billing-exporter-bench")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--tags-per-user", type=float, default=1.5)
    p.add_argument("--interval", type=int, default=15)
    p.add_argument("--hours", type=float, default=1.0)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)

    token = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory() as certs_dir:
        proc, url = _start_exporter(args, certs_dir, token)
        try:
            context = ssl.create_default_context(cafile=os.path.join(certs_dir, "ca.pem"))
            until = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
            since = until - timedelta(hours=args.hours)
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(verify=context, headers=headers, timeout=60) as client:
                _fetch(client, url, since, since + timedelta(minutes=1), args.limit, parse=True)  # warm-up
                for parse in (False, True):
                    for _ in range(args.repeat):
                        started = time.perf_counter()
                        samples, items, size = _fetch(client, url, since, until, args.limit, parse)
                        elapsed = time.perf_counter() - started
                        print(
                            f"{'parsed' if parse else 'raw   '} {samples} samples / {items} items / "
                            f"{size / 1e6:.1f} MB in {elapsed:.3f}s: {samples / elapsed:,.0f} samples/s, "
                            f"{size / 1e6 / elapsed:.0f} MB/s",
                            flush=True,
                        )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
