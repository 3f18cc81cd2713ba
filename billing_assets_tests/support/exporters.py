"""Reference exporters on loopback plus the registry entries that point at them."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from billing_assets.core.timeutil import format_rfc3339
from billing_assets.exporter import ExporterServer, Faults, ServerTls, TlsMaterial, TrafficShape, generate_tls_material


@dataclass
class RunningExporter:
    source_id: str
    server: ExporterServer
    tls: TlsMaterial
    entry: dict
    token: str | None = field(default=None, repr=False)


class ExporterFleet:
    """Starts exporters for a test and writes the registry that trusts them."""

    def __init__(self, root: Path, monkeypatch):
        self.root = root
        self.monkeypatch = monkeypatch
        self.exporters: dict[str, RunningExporter] = {}

    def start(
        self,
        source_id: str,
        *,
        billing_start: datetime,
        auth: str = "bearer",
        users: int = 8,
        seed: int = 1,
        interval_s: int = 15,
        server_name: str | None = None,
        faults: Faults | None = None,
        clock=None,
        restart_every_s: int | None = 1800,
        tls: TlsMaterial | None = None,
        **entry_overrides,
    ) -> RunningExporter:
        server_name = server_name or f"{source_id}.exporter.test"
        tls = tls or generate_tls_material(self.root / "tls" / source_id, server_names=(server_name,))
        shape = TrafficShape(
            node_id=f"node-{source_id}", env="test", source_id=source_id, seed=seed, users=users,
            interval_s=interval_s, restart_every_s=restart_every_s,
        )
        token = None
        if auth == "mtls":
            server = ExporterServer(shape, ServerTls(tls.server_cert, tls.server_key, tls.client_ca), auth="mtls", faults=faults, clock=clock)
            credential_ref = f"file:{tls.client_cert_key}"
        else:
            token = secrets.token_urlsafe(20)
            variable = f"BILLING_TEST_TOKEN_{source_id.upper().replace('-', '_').replace('.', '_')}"
            self.monkeypatch.setenv(variable, token)
            server = ExporterServer(shape, ServerTls(tls.server_cert, tls.server_key), auth="bearer", bearer_token=token, faults=faults, clock=clock)
            credential_ref = f"env:{variable}"
        server.start()
        entry = {
            "source_id": source_id,
            "node_id": shape.node_id,
            "env": shape.env,
            "base_url": server.url,
            "enabled": True,
            "auth_mode": auth,
            "credential_ref": credential_ref,
            "ca_bundle_ref": f"file:{tls.ca_cert}",
            "server_name": server_name,
            "request_timeout": "5s",
            "billing_start": format_rfc3339(billing_start),
            **entry_overrides,
        }
        running = RunningExporter(source_id, server, tls, entry, token)
        self.exporters[source_id] = running
        return running

    def write_registry(self, path: Path, extra_entries: list[dict] | None = None) -> Path:
        entries = [running.entry for running in self.exporters.values()] + list(extra_entries or [])
        path.write_text(yaml.safe_dump({"sources": entries}, sort_keys=False))
        return path

    def stop_all(self) -> None:
        for running in self.exporters.values():
            running.server.stop()
