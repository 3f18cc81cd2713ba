"""What the bench's entry points share: the machine line, fresh databases, a DAGSTER_HOME.

Kept apart so `bench.run` and `bench.fleet` (and `bench.steps`) depend on it,
not on each other.
"""

from __future__ import annotations

import os
import platform
from contextlib import ExitStack
from pathlib import Path


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {memory:.0f} GiB, {cpu}, Python {platform.python_version()}"


def database_urls(names: list[str], root: Path, admin_url: str | None, stack: ExitStack):
    """A factory of fresh, empty databases of each requested kind."""
    server = None
    if "postgres" in names and not admin_url:
        from billing_assets.devtools.postgres import pg_binaries_available, start_postgres

        if not pg_binaries_available():
            raise SystemExit("PostgreSQL binaries (initdb, pg_ctl) not on PATH; pass --postgres-admin-url or --db sqlite")
        server = start_postgres()
        stack.callback(server.stop)
    counter = iter(range(1_000_000))

    def fresh(kind: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{root / f'billing-{next(counter)}.sqlite'}"
        if server is not None:
            return server.create_database("bench")
        import uuid

        import psycopg
        from sqlalchemy.engine import make_url

        name = f"bench_{uuid.uuid4().hex[:12]}"
        url = make_url(admin_url)
        with psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return url.set(database=name).render_as_string(hide_password=False)

    return fresh


def dagster_home(root: Path, name: str, storage_url: str | None = None) -> str:
    """A DAGSTER_HOME; with `storage_url` (PostgreSQL) its runs, events and
    schedules live there, as in production (deploy/dagster.yaml)."""
    import yaml

    home = root / name
    home.mkdir(parents=True, exist_ok=True)
    config: dict = {"telemetry": {"enabled": False}}
    if storage_url:
        # dagster-postgres is tested on psycopg2; SQLAlchemy 2.1 maps postgresql:// to psycopg 3.
        pg_url = storage_url.replace("postgresql+psycopg://", "postgresql+psycopg2://")
        config["storage"] = {"postgres": {"postgres_url": pg_url}}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return str(home)
