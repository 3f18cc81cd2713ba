"""Reference exporters as separate processes, as in production: the pipeline
under test must not share a GIL with its upstream, or the benchmark would
measure the exporter's JSON encoder instead of the pipeline."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from billing_assets.core.timeutil import format_rfc3339

SERVER_NAME = "exporter.bench.test"


@dataclass(frozen=True)
class Shape:
    sources: int
    users: int
    tags: float
    interval_s: int
    minutes: int
    page_limit: int = 100

    @property
    def expected_samples(self) -> int:
        """Approximate (late joiners and tag rounding make the real count vary)."""
        return int(self.sources * self.users * self.tags * self.minutes * 60 / self.interval_s)

    def label(self) -> str:
        return f"{self.sources} src x {self.users} users x {self.tags:g} tags, every {self.interval_s}s, {self.minutes} min"


class ExporterProcesses:
    """Starts one `billing-exporter` per source (bearer auth, generated CA) and
    writes the registry that pins each one's CA and server name."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.entries: list[dict] = []
        self.token_env: dict[str, str] = {}

    def start(self, shape: Shape, billing_start: datetime) -> list[dict]:
        for index in range(shape.sources):
            source_id = f"bench-{index + 1:03d}"
            variable = f"BENCH_EXPORTER_TOKEN_{index + 1}"
            token = secrets.token_urlsafe(20)
            self.token_env[variable] = token
            certs = self.root / "tls" / source_id
            cmd = [
                sys.executable, "-m", "billing_assets.exporter", "--port", "0", "--generate-certs", str(certs),
                "--server-name", SERVER_NAME, "--token-env", variable, "--source-id", source_id,
                "--node-id", f"node-{index + 1:03d}", "--env", "bench", "--seed", str(index + 1),
                "--users", str(shape.users), "--tags-per-user", str(shape.tags), "--interval", str(shape.interval_s),
            ]  # fmt: skip
            proc = subprocess.Popen(
                cmd, env=dict(os.environ, **{variable: token}), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
            self.procs.append(proc)
            url = self._wait_listening(proc)
            self.entries.append(
                {
                    "source_id": source_id,
                    "node_id": f"node-{index + 1:03d}",
                    "env": "bench",
                    "base_url": url,
                    "enabled": True,
                    "auth_mode": "bearer",
                    "credential_ref": f"env:{variable}",
                    "ca_bundle_ref": f"file:{certs / 'ca.pem'}",
                    "server_name": SERVER_NAME,
                    "request_timeout": "120s",
                    "page_limit": shape.page_limit,
                    "billing_start": format_rfc3339(billing_start),
                }
            )
        os.environ.update(self.token_env)
        return self.entries

    @staticmethod
    def _wait_listening(proc: subprocess.Popen) -> str:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "listening on" in line:
                return line.split("listening on ")[1].split()[0]
        raise RuntimeError("exporter exited before listening")

    def write_registry(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({"sources": self.entries}, sort_keys=False))
        return path

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
