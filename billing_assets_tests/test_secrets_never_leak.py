"""Failing runs must explain themselves without quoting a secret.

Real runs fail for reasons that sit right next to a secret (a refused token,
a TLS failure while presenting a client key, a key file we refuse or cannot
parse); then every place a reason can surface is searched for the tokens and
the private key material: captured Python logs, the process's stdout/stderr,
every event of every run in the Dagster instance (metadata included), the
runs' config and tags, the failures as the caller gets them, the checkpoint
table, and every file Dagster and the billing database wrote.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from billing_assets.cli.main import main as billing_cli
from billing_assets.defs.runs import materialize_range
from billing_assets.definitions import defs
from billing_assets.storage.schema import source_checkpoints
from billing_assets_tests.support.outcomes import everything_dagster_recorded, failure_text, nothing_written

KEY_BLOCK = re.compile(r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----\n(.*?)\n-----END \1PRIVATE KEY-----\n?", re.S)


def key_fragments(pem_text: str) -> list[str]:
    """The base64 body of every private key in a PEM, whole and line by line
    (a leak could wrap or truncate it; each 64-character line is unique enough)."""
    fragments = []
    for _, body in KEY_BLOCK.findall(pem_text):
        lines = [line for line in body.splitlines() if len(line) >= 32]
        fragments += ["".join(body.split()), *lines]
    assert fragments, "no private key found in the PEM: the secret list would be empty"
    return fragments


def leaks(secrets: list[str], text: str) -> list[str]:
    return [secret[:6] + "..." for secret in secrets if secret in text]


def files_text(*roots: Path) -> str:
    parts = []
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def test_failing_runs_leak_no_token_and_no_private_key(billing_env, recent_hour, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    env, monkeypatch = billing_env, billing_env.fleet.monkeypatch
    start = recent_hour - timedelta(hours=1)
    fleet = env.fleet

    refused = fleet.start("leak-token", billing_start=start, users=2)
    tls_fail = fleet.start("leak-tls", billing_start=start, users=2, auth="mtls")
    world = fleet.start("leak-world", billing_start=start, users=2, auth="mtls")
    keyonly = fleet.start("leak-keyonly", billing_start=start, users=2, auth="mtls")
    env.write_registry()
    env.sync_partitions()

    # 1. a wrong bearer token is sent and refused (403): both tokens are secrets.
    sent_token = "wrong-but-still-secret-" + "k" * 16
    monkeypatch.setenv(refused.entry["credential_ref"][4:], sent_token)
    # 2. the client key (given inline through the environment) is loaded, then TLS fails on the server name.
    tls_pem = Path(tls_fail.tls.client_cert_key).read_text()
    monkeypatch.setenv("BILLING_TEST_LEAK_PEM", tls_pem)
    tls_fail.entry.update(credential_ref="env:BILLING_TEST_LEAK_PEM", server_name="elsewhere.exporter.test")
    # 3. a world-readable key file is refused.
    Path(world.tls.client_cert_key).chmod(0o644)
    # 4. a key file that holds the key but not its certificate cannot be used.
    keyonly_pem = Path(keyonly.tls.client_cert_key).read_text()
    key_path = env.root / "secrets" / "key-only.pem"
    key_path.parent.mkdir()
    key_path.write_text(KEY_BLOCK.search(keyonly_pem).group(0))
    key_path.chmod(0o600)
    keyonly.entry.update(credential_ref=f"file:{key_path}")
    env.write_registry()

    secrets = [sent_token, refused.token]
    for pem_path in (tls_fail.tls.client_cert_key, world.tls.client_cert_key, keyonly.tls.client_cert_key):
        secrets += key_fragments(Path(pem_path).read_text())
    assert leaks(secrets, tls_pem + sent_token), "the matcher must find secrets where they are"

    instance = env.instance()
    minute = recent_hour + timedelta(minutes=5)
    expected = {
        "leak-token": "HTTP 403",
        "leak-tls": "Hostname mismatch",
        "leak-world": "world-readable",
        "leak-keyonly": "client certificate/key from file reference is unusable",
    }
    outcomes = []
    for source_id, reason in expected.items():
        result = materialize_range(
            defs, instance, source_id, minute, minute + timedelta(minutes=1), raise_on_error=False, log_level="DEBUG"
        )
        text = failure_text(result)
        assert not result.success and reason in text, text
        assert nothing_written(env.engine, source_id)
        outcomes.append(text)
        outcomes += [str(event) for event in result.all_events]

    with env.engine.connect() as connection:
        checkpoint_rows = [str(dict(row)) for row in connection.execute(select(source_checkpoints)).mappings()]
    assert len(checkpoint_rows) == len(expected)
    captured = capfd.readouterr()
    for argv in (["status"], ["status", "--json"]):
        billing_cli(argv)
    status = capfd.readouterr()
    places = {
        "caplog": caplog.text + "\n".join(str(r.__dict__) for r in caplog.records),
        "stdout/stderr": captured.out + captured.err,
        "dagster event log, run config and tags": "\n".join(
            everything_dagster_recorded(instance, record.dagster_run.run_id) for record in instance.get_run_records()
        ),
        "failures as raised": "\n".join(outcomes),
        "source_checkpoints": "\n".join(checkpoint_rows),
        "billing status": status.out + status.err,
        "files under DAGSTER_HOME": files_text(env.dagster_home),
        "registry file": files_text(env.sources_file),
    }
    if env.database_url.startswith("sqlite:///"):
        places["billing database file"] = files_text(Path(env.database_url.removeprefix("sqlite:///")))
    assert len(instance.get_run_records()) == len(expected)
    for where in ("dagster event log, run config and tags", "billing status", "source_checkpoints"):
        assert "HTTP 403" in places[where], f"the search of {where} must cover the failures"
    found = {where: leaks(secrets, text) for where, text in places.items()}
    assert found == {where: [] for where in places}
