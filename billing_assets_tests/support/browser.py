"""The operator's UI, for real: `dagster-webserver` (and, when asked, `dagster-daemon`)
on a test's DAGSTER_HOME, and Debian's Chromium driven by Playwright.

Nothing here is a stand-in. The webserver is the same command an operator runs
(`-w workspace.yaml` from the repo root), it loads the code location in its own
subprocess with the test's environment (billing database, registry, the
exporters' token variables), and the page is the real React app in a real
headless Chromium (`/usr/bin/chromium`, from the distribution's packages;
Playwright's own browser download is never used and would fail here).

Screenshots go to `$BILLING_TEST_ARTIFACTS/<test name>/` when that variable is
set, else to the test's tmp_path; the directory is printed so a person can look.
The servers' own logs stay in tmp_path, not with the artifacts, and tests check
that no page they screenshot contains a secret.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
# What works on these machines (closed network, root): without the background-networking
# flags Chromium keeps trying to reach Google's hosts and gets refused.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1600, "height": 1000}


def require_browser() -> None:
    """Skip where no browser can run (a laptop without Chromium); in CI its absence is a failure."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package (pip install -e '.[test]')")
    if missing:
        message = "UI browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def graphql(port: int, query: str, variables: dict | None = None, timeout: float = 60) -> dict:
    """One GraphQL request, as the UI sends them; GraphQL errors raise with their message."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = json.loads(response.read())
    if body.get("errors"):
        raise AssertionError(f"GraphQL errors: {body['errors']}")
    return body["data"]


REPOSITORY_QUERY = """
{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } }
  ... on PythonError { message } } }
"""


@dataclass
class Webserver:
    port: int
    process: subprocess.Popen
    log_path: Path
    repository: str = ""
    location: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 60) -> dict:
        return graphql(self.port, query, variables, timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _process_env(dagster_home: Path, extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ, DAGSTER_HOME=str(dagster_home), DAGSTER_TELEMETRY_DISABLED="1")
    env.pop("PYTEST_CURRENT_TEST", None)
    env.update(extra or {})
    return env


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def webserver(dagster_home: Path, logs: Path, extra_env: dict[str, str] | None = None, timeout_s: float = 120) -> Iterator[Webserver]:
    """`dagster-webserver -w workspace.yaml` on a free loopback port, until it serves the code location."""
    port = free_port()
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / "dagster-webserver.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=ROOT, env=_process_env(dagster_home, extra_env), stdout=log, stderr=subprocess.STDOUT,
        )
    server = Webserver(port, process, log_path)
    try:
        deadline = time.monotonic() + timeout_s
        last_error: object = None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"dagster-webserver exited with {process.returncode}:\n{server.log_text()[-3000:]}")
            try:
                nodes = (server.graphql(REPOSITORY_QUERY, timeout=10).get("repositoriesOrError") or {}).get("nodes")
                if nodes:
                    server.repository, server.location = nodes[0]["name"], nodes[0]["location"]["name"]
                    break
                last_error = "no repository yet"
            except (OSError, urllib.error.URLError, AssertionError, ValueError) as error:
                last_error = error
            time.sleep(0.5)
        else:
            raise AssertionError(f"dagster-webserver never served the code location ({last_error}):\n{server.log_text()[-3000:]}")
        yield server
    finally:
        _stop(process)


@contextmanager
def daemon(dagster_home: Path, logs: Path, extra_env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """`dagster-daemon run -w workspace.yaml`: the run queue, backfills, sensors and schedules."""
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "dagster-daemon.log").open("wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=ROOT, env=_process_env(dagster_home, extra_env), stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        _stop(process)


def artifacts_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Where this test's screenshots go: $BILLING_TEST_ARTIFACTS/<test>/ or tmp_path/artifacts."""
    root = os.environ.get("BILLING_TEST_ARTIFACTS")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    directory = Path(root) / name if root else tmp_path / "artifacts"
    directory.mkdir(parents=True, exist_ok=True)
    print(f"\nUI screenshots: {directory}")
    return directory


@dataclass
class Browser:
    """One Chromium page plus where its screenshots go."""

    page: object
    artifacts: Path
    secrets: tuple[str, ...] = field(default=(), repr=False)
    shots: list[Path] = field(default_factory=list)

    def screenshot(self, name: str) -> Path:
        """Full-page PNG of what the operator sees now, refused if the page shows a secret."""
        self.assert_no_secret()
        path = self.artifacts / f"{len(self.shots) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.shots.append(path)
        return path

    def assert_no_secret(self) -> None:
        html = self.page.content()
        for secret in self.secrets:
            assert secret not in html, "a credential is visible in the UI"


@contextmanager
def chromium(artifacts: Path, secrets: tuple[str, ...] = ()) -> Iterator[Browser]:
    """Headless Debian Chromium with a fresh, empty profile, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    profile = Path(tempfile.mkdtemp(prefix="billing-chromium-"))
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, viewport=VIEWPORT,
            )
            try:
                context.set_default_timeout(30_000)
                page = context.pages[0] if context.pages else context.new_page()
                yield Browser(page, artifacts, tuple(s for s in secrets if s))
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
