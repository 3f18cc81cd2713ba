"""`billing status` is read-only: it works where it cannot write, and changes nothing.

The database is populated by a real run, then made unwritable for real: on
SQLite the directory and file are made immutable (`chattr +i`, which binds root
too; the suite runs as root, and root ignores `chmod -w`), on PostgreSQL the
command connects as a role with only SELECT rights and
`default_transaction_read_only=on`, as on a replica. The real `billing status`
command runs in a subprocess. A schema that is missing or behind is reported
with exit 2 and left exactly as it was.
"""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from billing_assets.defs.runs import materialize_range
from billing_assets.core.timeutil import floor_minute, now_utc
from billing_assets.definitions import defs
from billing_assets.defs.resources import BillingStore
from billing_assets.storage.engine import alembic_config, get_engine, head_revision, reset_caches, schema_revision

BIN = Path(sys.executable).parent


def _status(*args: str, url: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if url:
        env["BILLING_DATABASE_URL"] = url
    return subprocess.run([str(BIN / "billing"), "status", *args], capture_output=True, text=True, env=env, timeout=120)


def _populate(billing_env) -> None:
    """Two healthy sources' last minutes, billed by a real run each."""
    now = floor_minute(now_utc())
    for seed, source_id in enumerate(("ro-1", "ro-2"), 1):
        billing_env.fleet.start(source_id, billing_start=now - timedelta(hours=1), users=3, seed=seed)
    billing_env.write_registry()
    billing_env.sync_partitions()
    for source_id in ("ro-1", "ro-2"):
        assert materialize_range(defs, billing_env.instance(), source_id, now - timedelta(minutes=5), now, log_level="ERROR").success


def _fingerprint(directory: Path) -> dict[str, tuple[int, int, str]]:
    return {
        path.name: (path.stat().st_mtime_ns, path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(directory.iterdir())
    }


@contextmanager
def _immutable(*paths: Path):
    """Paths nobody can write, root included, for the duration of the block."""
    if os.geteuid() != 0:
        modes = {path: path.stat().st_mode for path in paths}
        for path in paths:
            path.chmod(modes[path] & ~0o222)
        try:
            yield
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    if not shutil.which("chattr"):
        pytest.skip("running as root without chattr: cannot make the database unwritable")
    done = []
    try:
        for path in paths:
            result = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
            if result.returncode != 0:
                pytest.skip(f"chattr +i not supported here: {result.stderr.strip()}")
            done.append(path)
        probe = paths[0] / "probe" if paths[0].is_dir() else paths[0].parent / "probe"
        with pytest.raises(OSError):
            probe.write_text("x")
        yield
    finally:
        for path in done:
            subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_status_on_an_unwritable_sqlite_directory_reads_and_changes_nothing(billing_env, monkeypatch):
    # On disk, not in the suite's memory temp dir (conftest): tmpfs has no immutable flag.
    directory = Path(tempfile.mkdtemp(prefix="billing-ro-db-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    moved = directory / "billing.sqlite"
    url = billing_env.database_url = f"sqlite:///{moved}"
    monkeypatch.setenv("BILLING_DATABASE_URL", url)
    reset_caches()
    _populate(billing_env)
    reset_caches()
    gc.collect()
    # The last connection to close folds the WAL into the file and removes -wal/-shm.
    connection = sqlite3.connect(moved)
    connection.execute("SELECT COUNT(*) FROM usage_samples").fetchone()
    connection.close()
    before = _fingerprint(directory)
    assert list(before) == [moved.name], "a cleanly closed WAL database is one file"
    with open(moved, "rb") as raw:
        header = raw.read(20)
    assert header[18:20] == b"\x02\x02", "the database is in WAL mode, the case that needs a -shm to read"

    with _immutable(directory, moved):
        result = _status(url=url)
        as_json = _status("--json", url=url)
        after = _fingerprint(directory)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("ro-")}
    assert set(rows) == {"ro-1", "ro-2"} and all(row.rstrip().endswith("ok") for row in rows.values()), result.stdout
    assert as_json.returncode == 0 and '"source_id": "ro-1"' in as_json.stdout
    assert after == before, "status created, grew or touched a file (no -wal/-shm, same bytes and mtime)"
    shutil.rmtree(directory, ignore_errors=True)


def test_the_read_engine_refuses_writes_and_never_migrates(billing_env, recent_hour):
    """The read engine is not the writer with a flag: the database itself refuses."""
    billing_env.engine  # migrate through the writer
    engine = BillingStore().read_engine()
    with pytest.raises(DBAPIError, match="(?i)read.?only"):
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO source_checkpoints (source_id, consecutive_failures) VALUES ('x', 0)"))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM source_checkpoints")).scalar() == 0


def _older_schema(url: str, revision: str) -> None:
    with get_engine(url).begin() as connection:
        command.upgrade(alembic_config(connection), revision)


def test_status_on_a_missing_or_old_schema_says_so_and_migrates_nothing(billing_env, recent_hour):
    billing_env.fleet.start("ro-1", billing_start=recent_hour, users=2)
    billing_env.write_registry()
    url = billing_env.database_url

    if url.startswith("sqlite"):
        missing = _status(url=f"sqlite:///{billing_env.root / 'nowhere' / 'billing.sqlite'}")
        assert missing.returncode == 2 and "no database file" in missing.stderr and "Traceback" not in missing.stderr
        assert not (billing_env.root / "nowhere").exists(), "status created the database's directory"
        Path(make_url(url).database).touch()  # an empty file is an empty SQLite database

    empty = _status()
    assert empty.returncode == 2, empty.stdout + empty.stderr
    assert "no billing schema" in empty.stderr and "billing db upgrade" in empty.stderr and "Traceback" not in empty.stderr

    _older_schema(url, "0002")
    reset_caches()
    old = _status()
    assert old.returncode == 2 and f"is at schema revision 0002, this code needs {head_revision()}" in old.stderr, old.stderr
    with get_engine(url).connect() as connection:
        assert schema_revision(connection) == "0002", "status must not migrate"


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_status_as_a_select_only_read_only_role_on_postgres(billing_env):
    _populate(billing_env)
    url = make_url(billing_env.database_url)
    with get_engine(billing_env.database_url).begin() as connection:
        connection.exec_driver_sql("CREATE ROLE billing_reader LOGIN")
        connection.exec_driver_sql(f'GRANT CONNECT ON DATABASE "{url.database}" TO billing_reader')
        connection.exec_driver_sql("GRANT USAGE ON SCHEMA public TO billing_reader")
        connection.exec_driver_sql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO billing_reader")
        connection.exec_driver_sql("ALTER ROLE billing_reader SET default_transaction_read_only = on")
        before = connection.execute(text("SELECT COUNT(*) FROM usage_samples")).scalar()
    reader = url.set(username="billing_reader").render_as_string(hide_password=False)
    try:
        result = _status(url=reader)
        assert result.returncode == 0, result.stdout + result.stderr
        assert {line.split()[0] for line in result.stdout.splitlines() if line.startswith("ro-")} == {"ro-1", "ro-2"}
        with get_engine(billing_env.database_url).connect() as connection:
            assert connection.execute(text("SELECT COUNT(*) FROM usage_samples")).scalar() == before
    finally:
        reset_caches()
        with get_engine(billing_env.database_url).begin() as connection:
            connection.exec_driver_sql(f'REVOKE ALL ON DATABASE "{url.database}" FROM billing_reader')
            connection.exec_driver_sql("DROP OWNED BY billing_reader")
            connection.exec_driver_sql("DROP ROLE billing_reader")
        reset_caches()


def test_the_collection_sensor_reads_a_never_migrated_database_without_creating_it(billing_env, recent_hour):
    """Sensors only read: on a fresh deployment they request the first runs (which migrate)
    instead of creating the schema themselves or failing on a missing table."""
    import dagster as dg

    from billing_assets.defs.automation.collection_sensor import collection_sensor

    billing_env.fleet.start("ro-1", billing_start=recent_hour, users=2)
    billing_env.write_registry()
    billing_env.sync_partitions()
    context = dg.build_sensor_context(instance=billing_env.instance(), resources={"billing": BillingStore()}, definitions=defs)
    result = collection_sensor(context)
    assert isinstance(result, dg.SensorResult) and [r.tags["billing/source"] for r in result.run_requests] == ["ro-1"]
    if billing_env.database_url.startswith("sqlite"):
        assert not Path(make_url(billing_env.database_url).database).exists(), "the sensor created the database"
    else:
        with get_engine(billing_env.database_url).connect() as connection:
            assert schema_revision(connection) is None, "the sensor migrated the database"
