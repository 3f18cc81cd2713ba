"""Shared fixtures: real databases (SQLite file and a PostgreSQL server the
tests start themselves), real HTTPS exporters, and a Dagster instance."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import hypothesis  # noqa: F401 - compile it now: CPython 3.11.7 can crash (gh-106905) compiling it lazily while exporter threads run
import pytest

from billing_assets.core.timeutil import floor_minute, now_utc
from billing_assets.storage.engine import get_engine, migrate, reset_caches
from billing_assets_tests.support.exporters import ExporterFleet
from billing_assets.devtools.postgres import pg_binaries_available, start_postgres
from billing_assets_tests.support.scripted_exporter import start_scripted_upstream

os.environ.setdefault("DAGSTER_TELEMETRY_DISABLED", "1")


def _temp_in_memory(minimum_free: int = 4 * 2**30) -> None:
    """Temp files (tmp_path, SQLite files, Dagster homes, PostgreSQL data dirs) in /dev/shm when it is roomy.

    Dagster's SQLite instance storage commits every event with an fsync, and
    a range run stores hundreds of events: on this machine's disk that was
    over half of a long run's time in tests. The tests assert what is billed,
    not what survives a power cut (their PostgreSQL runs with fsync off for
    the same reason), so a memory file system changes no outcome. Falls back
    to the normal temp dir where /dev/shm is small or absent; TMPDIR set by
    the caller always wins.
    """
    shm = "/dev/shm"
    if os.environ.get("TMPDIR") or not os.path.isdir(shm) or not os.access(shm, os.W_OK):
        return
    if shutil.disk_usage(shm).free < minimum_free:
        return
    root = os.path.join(shm, f"billing-tests-{os.getuid()}")
    os.makedirs(root, exist_ok=True)
    os.environ["TMPDIR"] = root  # subprocesses: dagster CLI, webserver, run workers
    tempfile.tempdir = root


_temp_in_memory()


@pytest.fixture(autouse=True)
def _no_leftover_dagster_load_state():
    """Each test starts without the process-wide load state an earlier test's instance left behind.

    Dagster keeps the current definitions-state storage (holding a weak
    reference to its instance) and the definitions load context in
    process-wide variables. A test whose instance is gone can leave them set,
    and the next code-location load in that process then fails with
    "undefined DagsterInstance weakref": which test follows which depends on
    how the suite is split over workers.
    """
    from dagster._core.definitions.definitions_load_context import DefinitionsLoadContext
    from dagster._core.storage.defs_state import base as defs_state

    defs_state._current_storage.set(None)
    DefinitionsLoadContext._instance = None
    yield


@pytest.fixture(scope="session")
def postgres_server():
    if not pg_binaries_available():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, postgres) are not on PATH")
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path) -> str:
    """A fresh, empty billing database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'billing.sqlite'}"
    return request.getfixturevalue("postgres_server").create_database()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'billing.sqlite'}"


@dataclass
class BillingEnv:
    root: Path
    database_url: str
    sources_file: Path
    dagster_home: Path
    fleet: ExporterFleet

    @property
    def engine(self):
        return migrate(get_engine(self.database_url))

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.get()

    def write_registry(self, extra_entries: list[dict] | None = None) -> Path:
        return self.fleet.write_registry(self.sources_file, extra_entries)

    def fetch(self, source_id: str, start: datetime, end: datetime, retry=None):
        """One fetch step of a registered source, outside Dagster."""
        from billing_assets.pipeline.fetch import fetch_slice
        from billing_assets.pipeline.slices import Slice
        from billing_assets.registry.model import load_registry

        source = load_registry(self.sources_file).get(source_id)
        return fetch_slice(self.engine, source, Slice(source_id, start, end), retry=retry)

    def sync_partitions(self) -> None:
        from billing_assets.defs.automation.source_partitions import sync_instance
        from billing_assets.registry.model import load_registry

        sync_instance(self.instance(), load_registry(self.sources_file))


@pytest.fixture
def billing_env(tmp_path, monkeypatch, database_url) -> BillingEnv:
    """Environment variables exactly as production reads them, pointing at temp state."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    sources_file = tmp_path / "sources.yaml"
    monkeypatch.setenv("BILLING_DATABASE_URL", database_url)
    monkeypatch.setenv("BILLING_SOURCES_FILE", str(sources_file))
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.delenv("BILLING_PRICING_FILE", raising=False)
    reset_caches()
    fleet = ExporterFleet(tmp_path, monkeypatch)
    env = BillingEnv(tmp_path, database_url, sources_file, dagster_home, fleet)
    yield env
    fleet.stop_all()
    reset_caches()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """One scripted HTTPS exporter per test module; each test installs its own script (own source and node)."""
    with pytest.MonkeyPatch.context() as patch:
        running = start_scripted_upstream(tmp_path_factory.mktemp("scripted"))
        patch.setenv(running.token_variable, running.token)
        yield running
        running.stop()


@pytest.fixture
def recent_hour() -> datetime:
    """A closed, recent window start: inside the rolling partition space."""
    return floor_minute(now_utc()) - timedelta(hours=3)
