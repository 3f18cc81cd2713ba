"""`billing demo --ui`: the demo, then a live Dagster UI a newcomer can click through.

The slow test runs the real command as a subprocess on free ports, reads the
URL it prints, and asks the webserver's GraphQL what an operator would see:
sensors on, a replay launched as the UI launches it, new minute partitions
billed by the collection sensor while it runs, `source_health` green. SIGTERM
then has to leave nothing behind: no child process, nothing listening, and
no token anywhere in what the command printed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from billing_assets.core.timeutil import floor_minute, now_utc, parse_rfc3339
from billing_assets.defs.runs import BILLING_ASSETS
from billing_assets_tests.support.browser import free_port, graphql
from billing_assets_tests.support.waiting import wait_until

BIN = Path(sys.executable).parent

STATE_QUERY = """
{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name }
    sensors { name sensorState { status } } schedules { name scheduleState { status } } } } } }
"""
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchPipelineExecution(executionParams: $params) {
    __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } ... on InvalidSubsetError { message }
  }
}
"""
RUN = """
query Run($id: ID!) { runOrError(runId: $id) { ... on Run { status tags { key value } } } }
"""
RUNS = """
query Runs($tags: [ExecutionTag!]) {
  runsOrError(filter: {tags: $tags}, limit: 50) { ... on Runs { results { runId status tags { key value } } } }
}
"""
MATERIALIZATIONS = """
query Mats($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) { ... on Asset { assetMaterializations(limit: 100) { partition runId } } }
}
"""
HEALTH_CHECKS = """
{ assetNodes(assetKeys: [{path: ["source_health"]}]) {
    assetChecksOrError { ... on AssetChecks { checks { name executionForLatestMaterialization { status } } } } } }
"""


def test_an_unreachable_exporter_is_named_with_its_address(tmp_path, monkeypatch):
    """What a sensor's run, `source_health` and `billing status` show for an exporter that is gone."""
    from billing_assets.exporter import generate_tls_material
    from billing_assets.registry.model import Source
    from billing_assets.transport.client import ExporterClient, RetryPolicy
    from billing_assets.transport.errors import SourceFetchError

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tls = generate_tls_material(tmp_path / "tls", server_names=("gone.exporter.test",))
    monkeypatch.setenv("GONE_TOKEN", "t0ken-for-a-gone-exporter")
    end = floor_minute(now_utc())
    source = Source.model_validate({
        "source_id": "gone-1", "node_id": "node-gone", "env": "test", "base_url": f"https://127.0.0.1:{port}",
        "server_name": "gone.exporter.test", "ca_bundle_ref": f"file:{tls.ca_cert}", "auth_mode": "bearer",
        "credential_ref": "env:GONE_TOKEN", "billing_start": (end - timedelta(hours=1)).isoformat(),
    })
    with pytest.raises(SourceFetchError) as raised, ExporterClient(source, RetryPolicy(attempts=1)) as client:
        list(client.iter_window(end - timedelta(minutes=1), end))
    message = str(raised.value)
    assert message.startswith("source 'gone-1': ") and f"https://127.0.0.1:{port}" in message, message
    assert "t0ken" not in message


def test_the_live_environment_names_files_not_secrets(tmp_path, monkeypatch):
    """The token lives in a 0600 file the registry refers to; what is printed and exported holds no secret."""
    from billing_assets.cli import demo
    from billing_assets.registry.credentials import resolve_bearer_token

    token, ref = demo._token(tmp_path, "demo-1", reuse=False)
    path = Path(ref.removeprefix("file:"))
    assert path.parent == tmp_path / "secrets" and path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "secrets").stat().st_mode & 0o777 == 0o700
    assert resolve_bearer_token(ref).get_secret_value() == token, "what a run worker reads later"
    assert demo._token(tmp_path, "demo-1", reuse=True) == (token, ref), "a resumed workdir keeps its token"

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("BILLING_SOURCES_FILE", str(tmp_path / "sources.yaml"))
    monkeypatch.setenv("BILLING_DATABASE_URL", f"sqlite:///{tmp_path / 'billing.sqlite'}")
    monkeypatch.setenv("DEMO_KILLBILL_TOKEN", "receiver-secret-from-the-short-demo")
    env, lines = demo._live_env(tmp_path, tmp_path / "accounts.yaml")
    assert "DEMO_KILLBILL_TOKEN" not in env, "the children read the receiver's token from its file"
    assert env["DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"] == "true" and env["BILLING_ACCOUNTS_FILE"] == lines["BILLING_ACCOUNTS_FILE"]
    written = (tmp_path / demo.ENV_FILE).read_text()
    assert token not in written and "receiver-secret" not in written and "export DAGSTER_HOME=" in written


class _Command:
    """The `billing demo --ui` process, its output read as it comes."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def text(self) -> str:
        return "".join(self.out) + "".join(self.err)

    def line(self, prefix: str) -> str | None:
        return next((line for line in list(self.out) if line.startswith(prefix)), None)

    def finish(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def _descendants(pid: int) -> dict[int, str]:
    """Every live process below `pid`, with its start time (so a reused pid is not mistaken for it)."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            started[int(entry.name)] = fields[19]
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = started[child]
            todo.append(child)
    return found


def _alive(pid: int, started: str) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == started and fields[0] != "Z"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_billing_demo_ui_goes_live_then_stops_cleanly(tmp_path):
    workdir, port = tmp_path / "demo", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BILLING_", "DAGSTER_")) and k != "PYTEST_CURRENT_TEST"}
    # With --ui the demo leaves the last closed minute to collection_sensor, so its first tick (at the daemon's
    # start) has a minute to bill; due 1 s after a minute closes instead of 30 s, it need not wait a tick more.
    env.update(BILLING_COLLECT_LAG="1s", DAGSTER_TELEMETRY_DISABLED="1")
    launched_at = time.monotonic()
    command = _Command(
        [str(BIN / "billing"), "demo", "--ui", "--minutes", "3", "--users", "5", "--workdir", str(workdir), "--port", str(port)], env
    )
    try:
        wait_until(lambda: command.line("Dagster UI: ") or command.process.poll() is not None, "the UI's URL", timeout_s=180,
                   explain=lambda: command.text()[-3000:])
        assert command.line("Dagster UI: "), command.text()[-3000:]
        seen_url = time.monotonic()
        url = command.line("Dagster UI: ").split(": ", 1)[1].strip()
        assert url == f"http://127.0.0.1:{port}"
        window_end = parse_rfc3339(re.search(r"window:\s+\[[^,]+, ([^)]+)\)", command.text()).group(1))
        window_start = window_end - timedelta(minutes=3)
        ask = lambda query, variables=None: graphql(port, query, variables, timeout=30)  # noqa: E731

        (repository,) = ask(STATE_QUERY)["repositoriesOrError"]["nodes"]
        states = {s["name"]: s["sensorState"]["status"] for s in repository["sensors"]}
        states |= {s["name"]: s["scheduleState"]["status"] for s in repository["schedules"]}
        assert {"collection_sensor", "exporter_sources_sensor", "source_health_schedule"} <= set(states)
        assert set(states.values()) == {"RUNNING"}, states

        # A replay of one billed window of demo-1, sent as the UI's Materialize dialog sends it for one partition
        # (a range goes through the backfill daemon instead: test_run_coordinator.py, test_ui_browser.py).
        minute = f"{window_start + timedelta(minutes=1):%Y-%m-%d-%H:%M}"
        tags = {"dagster/partition": f"{minute}|demo-1", "dagster/partition/minute": minute, "dagster/partition/source": "demo-1"}
        selector = {"repositoryName": repository["name"], "repositoryLocationName": repository["location"]["name"],
                    "pipelineName": "__ASSET_JOB", "assetSelection": [{"path": [a]} for a in BILLING_ASSETS]}
        launched = ask(LAUNCH, {"params": {"selector": selector, "mode": "default", "runConfigData": {},
                                           "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]}}})
        launched = launched["launchPipelineExecution"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        replay_id = launched["run"]["runId"]

        # source_health: materialized by the demo before going live, both checks green.
        (node,) = ask(HEALTH_CHECKS)["assetNodes"]
        checks = {c["name"]: (c["executionForLatestMaterialization"] or {}).get("status") for c in node["assetChecksOrError"]["checks"]}
        assert checks and set(checks.values()) == {"SUCCEEDED"}, checks

        live_minute = f"{window_end:%Y-%m-%d-%H:%M}"

        def live_minutes_billed() -> set[str]:
            runs = ask(RUNS, {"tags": [{"key": "billing/trigger", "value": "collect"}]})["runsOrError"]["results"]
            succeeded = {r["runId"] for r in runs if r["status"] == "SUCCESS"}
            mats = ask(MATERIALIZATIONS, {"path": ["usage_minute_buckets"]})["assetOrError"]["assetMaterializations"]
            return {m["partition"] for m in mats if m["runId"] in succeeded and m["partition"].split("|")[0] >= live_minute}

        wait_until(live_minutes_billed, "the collection sensor to bill a minute after the demo's range", timeout_s=150,
                   explain=lambda: command.text()[-2000:])
        billed = time.monotonic()

        def replay() -> dict:
            return ask(RUN, {"id": replay_id})["runOrError"]

        wait_until(lambda: replay()["status"] in ("SUCCESS", "FAILURE", "CANCELED"), "the replay", timeout_s=60)
        assert replay()["status"] == "SUCCESS"
        assert {"key": "billing/source", "value": "demo-1"} in replay()["tags"], "queued behind its source (our coordinator)"
        with sqlite3.connect(workdir / "billing.sqlite") as db:
            appended = db.execute("SELECT COUNT(*) FROM billing_ledger WHERE run_id = ?", (replay_id,)).fetchone()[0]
        assert appended == 0, "a replay of billed minutes appends nothing"
        replayed = time.monotonic()

        children = _descendants(command.process.pid)
        assert len(children) >= 2, "dagster-daemon and dagster-webserver run as children"
        ports = [port, *(int(e["base_url"].rsplit(":", 1)[1]) for e in yaml.safe_load((workdir / "sources.yaml").read_text())["sources"])]
        assert all(_listening(p) for p in ports)

        command.process.send_signal(signal.SIGTERM)
        assert command.finish(timeout=60) == 0, command.text()[-3000:]
        stopped = time.monotonic()
        left = [pid for pid, start in children.items() if _alive(pid, start)]
        assert not left, f"still running after the command exited: {left}"
        assert not [p for p in ports if _listening(p)], "nothing listens on the UI's or the exporters' ports any more"
    finally:
        command.kill()

    tokens = [path.read_text().strip() for path in (workdir / "secrets").glob("*.token")]
    assert len(tokens) == 2, "demo-1's and the receiver's bearer tokens are saved"
    logs = "".join(path.read_text(errors="replace") for path in (workdir / "logs").glob("*.log"))
    for token in tokens:
        assert token not in command.text(), "a token was printed"
        assert token not in logs, "a token reached the daemon's or the webserver's log"
    assert "stopping the UI" in command.text()
    print(f"demo --ui, seconds after launch: URL {seen_url - launched_at:.1f}, a live minute billed {billed - launched_at:.1f}, "
          f"replay checked {replayed - launched_at:.1f}, stopped {stopped - launched_at:.1f}")
