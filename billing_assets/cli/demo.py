"""`billing demo`: real exporters over HTTPS into a real ledger, nothing to install.

Two reference exporters (one bearer + pinned CA, one mTLS) run on loopback
with freshly generated certificates whose names differ from the address
dialled, so the demo exercises the same trust path as production. Everything
lives in one directory (temporary unless `--workdir`): SQLite billing
database, DAGSTER_HOME, registry, certificates, and the bearer tokens as
0600 files that the registry names as `credential_ref: file:...`, so any
later process (webserver, daemon, run workers) can read them.

`--ui` then goes live: the exporters keep serving traffic by wall clock, the
reference receiver keeps taking remittances, and `dagster-daemon run` plus
`dagster-webserver` run as children on the same SQLite DAGSTER_HOME with the
production run queue (our coordinator, one run per source). Collection,
health and remittance then run by themselves until Ctrl-C or SIGTERM, which
stops the children and the servers. The short demo's range then ends a
minute earlier, so the daemon's first collection tick has a closed minute to
bill and the UI shows a live run at once. `--ui --workdir DIR` on a directory a
demo made before resumes it instead of billing again: same certificates,
tokens and traffic, the same ports when they are free (otherwise new ports,
written back into the registry's `base_url`), and the collection sensor
catches up from the checkpoint.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from billing_assets.core.timeutil import MINUTE, floor_minute, format_rfc3339, now_utc

PARAMS_FILE = "demo.json"  # what the exporters serve (sources, users), so a resumed workdir serves the same traffic
ENV_FILE = "demo.env"
# Remittance pace of the demo (remit_demo sets the same): an hour goes out a minute after its sources passed it.
REMIT_ENV = {"BILLING_REMIT_SETTLE": "1m", "BILLING_REMIT_BACKOFF": "1s", "BILLING_REMIT_LOOKBACK": "3h"}

WORKSPACE_YAML = """\
# Written by `billing demo`: the code location its webserver and daemon load (the repo's workspace.yaml, usable from anywhere).
load_from:
  - python_module:
      module_name: billing_assets.definitions
      location_name: billing_assets
      executable_path: {python}
"""

INSTANCE_YAML = """\
# Written by `billing demo`. Dagster's default storage: embedded SQLite under this directory.
# The run queue is production's (deploy/dagster.yaml) without PostgreSQL: our coordinator tags
# every run with its `billing/source`, and never two runs of one source at once.
run_coordinator:
  module: billing_assets.defs.run_coordinator
  class: BillingRunCoordinator
  config:
    max_concurrent_runs: 4
    tag_concurrency_limits:
      - key: billing/source
        value:
          applyLimitPerUniqueValue: true
        limit: 1
    dequeue_interval_seconds: 2
run_launcher:
  module: dagster.core.launcher
  class: DefaultRunLauncher
run_retries:
  enabled: false  # a failed collection is re-requested by the sensor from the checkpoint
telemetry:
  enabled: false
"""

SENSOR_DAEMONS = ("SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR")
STATE_QUERY = """
{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name }
    sensors { name sensorState { status } } schedules { name scheduleState { status } } } } }
  instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }
"""
START_SENSOR = """
mutation Start($selector: SensorSelector!) { startSensor(sensorSelector: $selector) { __typename ... on PythonError { message } } }
"""
START_SCHEDULE = """
mutation Start($selector: ScheduleSelector!) { startSchedule(scheduleSelector: $selector) { __typename ... on PythonError { message } } }
"""


def _write_private(path: Path, text: str) -> None:
    """A file only its owner can read (what `file:` credential refs require), written in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _token(root: Path, name: str, reuse: bool) -> tuple[str, str]:
    """A bearer token kept in `secrets/<name>.token` (0600): (token, its credential_ref)."""
    path = root / "secrets" / f"{name}.token"
    token = path.read_text().strip() if reuse and path.exists() else ""
    if not token:
        token = secrets.token_urlsafe(24)
        _write_private(path, token + "\n")
    return token, f"file:{path}"


def _tls(root: Path, name: str, server_name: str, reuse: bool):
    from billing_assets.exporter import TlsMaterial, generate_tls_material

    directory = root / "tls" / name
    files = {"ca_cert": "ca.pem", "server_cert": "server.pem", "server_key": "server.key", "client_cert_key": "client.pem"}
    if reuse and all((directory / f).exists() for f in files.values()):
        return TlsMaterial(dir=str(directory), **{field: str(directory / f) for field, f in files.items()})
    return generate_tls_material(directory, server_names=(server_name,))


def _port_of(url: str | None) -> int:
    try:
        return urlsplit(url or "").port or 0
    except ValueError:
        return 0


def _start(make, port: int, stack: ExitStack):
    """Start `make(port)`, on a new port when that one is taken; stopped when the stack closes."""
    try:
        server = make(port).start() if port else None
    except OSError:
        server = None
    server = server or make(0).start()
    stack.callback(server.stop)
    return server


def _sources(workdir: Path, count: int, users: int, stack: ExitStack, previous: dict[str, dict] | None = None) -> list[dict]:
    """Start the exporters; `previous` (the registry's entries) reuses their certificates, tokens and ports."""
    from billing_assets.exporter import ExporterServer, ServerTls, TrafficShape

    entries = []
    for index in range(count):
        source_id = f"demo-{index + 1}"
        server_name = f"exporter-{index + 1}.demo.test"
        before = (previous or {}).get(source_id)
        tls = _tls(workdir, source_id, server_name, reuse=before is not None)
        shape = TrafficShape(seed=index + 1, users=users, node_id=f"node-{index + 1}", env="demo", source_id=source_id)
        mtls = index % 2 == 1
        entry = {
            "source_id": source_id,
            "node_id": shape.node_id,
            "env": shape.env,
            "enabled": True,
            "server_name": server_name,
            "ca_bundle_ref": f"file:{tls.ca_cert}",
            "collect_interval": "60s",
            "request_timeout": "10s",
        }
        if mtls:
            def make(port, shape=shape, tls=tls):
                return ExporterServer(shape, ServerTls(tls.server_cert, tls.server_key, tls.client_ca), auth="mtls", port=port)

            entry.update(auth_mode="mtls", credential_ref=f"file:{tls.client_cert_key}")
        else:
            token, ref = _token(workdir, source_id, reuse=before is not None)

            def make(port, shape=shape, tls=tls, token=token):
                return ExporterServer(shape, ServerTls(tls.server_cert, tls.server_key), auth="bearer", bearer_token=token, port=port)

            entry.update(auth_mode="bearer", credential_ref=ref)
        if before is not None:
            entry = {**before, **{k: entry[k] for k in ("ca_bundle_ref", "auth_mode", "credential_ref")}}
        server = _start(make, _port_of(before and before.get("base_url")), stack)
        entry["base_url"] = server.url
        entries.append(entry)
    return entries


def _saved_params(root: Path) -> dict | None:
    """The parameters of the demo that made this workdir, when it can be resumed."""
    needed = [root / PARAMS_FILE, root / "sources.yaml", root / "billing.sqlite", root / "dagster_home"]
    if not all(path.exists() for path in needed):
        return None
    try:
        params = json.loads((root / PARAMS_FILE).read_text())
        return {"sources": int(params["sources"]), "users": int(params["users"])}
    except (ValueError, KeyError, TypeError):
        return None


def run_demo(
    minutes: int = 30, sources: int = 2, users: int = 50, workdir: str | None = None,
    ui: bool = False, host: str = "127.0.0.1", port: int = 3000,
) -> int:
    started = time.monotonic()
    if ui:
        problem = _port_problem(host, port)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    with ExitStack() as stack:
        root = Path(workdir).resolve() if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="billing-demo-")))
        root.mkdir(parents=True, exist_ok=True)
        saved = _saved_params(root) if ui and workdir else None
        if saved and (saved["sources"], saved["users"]) != (sources, users):
            print(f"note: resuming {root} with its own --sources {saved['sources']} --users {saved['users']}")
        dagster_home = root / "dagster_home"
        dagster_home.mkdir(exist_ok=True)
        (dagster_home / "dagster.yaml").write_text(INSTANCE_YAML)
        registry_file = root / "sources.yaml"
        os.environ.update(
            BILLING_SOURCES_FILE=str(registry_file),
            BILLING_DATABASE_URL=f"sqlite:///{root / 'billing.sqlite'}",
            DAGSTER_HOME=str(dagster_home),
        )
        if saved:
            sources, users = saved["sources"], saved["users"]
            previous = {e["source_id"]: e for e in (yaml.safe_load(registry_file.read_text()) or {}).get("sources", [])}
            entries = _sources(root, sources, users, stack, previous)
            registry_file.write_text(yaml.safe_dump({"sources": entries}, sort_keys=False))
            print(f"resuming {root}: {len(entries)} exporters at " + ", ".join(f"{e['source_id']} {e['base_url']}" for e in entries))
        else:
            # Live, the last closed minute is left to collection_sensor: the UI shows a run billing it at once.
            end = floor_minute(now_utc()) - (MINUTE if ui else timedelta(0))
            start = end - minutes * MINUTE
            entries = _sources(root, sources, users, stack)
            for entry in entries:
                entry["billing_start"] = format_rfc3339(start)
            registry_file.write_text(yaml.safe_dump({"sources": entries}, sort_keys=False))
            (root / PARAMS_FILE).write_text(json.dumps({"sources": sources, "users": users}) + "\n")
            code = _materialize_and_report(entries, start, end, started)
            if code == 0:
                from billing_assets.cli.demo_remittance import remit_demo

                code = remit_demo(root, sources, users, start, end)
                print(f"remittance done in {time.monotonic() - started:.1f}s total")
            if code != 0 or not ui:
                return code
            _report_health()
        return _go_live(root, host, port, stack, resumable=bool(workdir))


def _report_health() -> None:
    """Materialize `source_health` once, so the UI shows it (and its checks) from the start."""
    import dagster as dg

    from billing_assets.definitions import defs

    instance = dg.DagsterInstance.get()
    result = defs.resolve_job_def("source_health_job").execute_in_process(
        instance=instance, raise_on_error=False, run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    checks = ", ".join(f"{e.check_name} {'passed' if e.passed else 'FAILED'}" for e in result.get_asset_check_evaluations())
    print(f"source_health: run {result.run_id[:8]} {'ok' if result.success else 'FAILED'} ({checks})")


# -- live: the UI, its daemon and the servers until Ctrl-C ------------------------------------


def _port_problem(host: str, port: int) -> str | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the webserver binds
        try:
            sock.bind((host, port))
        except OSError as error:
            return f"cannot serve the UI on {host}:{port} ({error.strerror}); pass --port (and --host)"
    return None


def _live_receiver(root: Path, stack: ExitStack) -> Path | None:
    """Keep the demo's reference receiver up, so hourly remittances keep going out; the accounts file it needs."""
    from billing_assets.exporter import ServerTls
    from billing_assets.receiver import ReceiverServer

    accounts_file, tls = root / "accounts.yaml", root / "tls" / "receiver"
    if not (accounts_file.exists() and (tls / "server.pem").exists() and (tls / "server.key").exists()):
        return None
    doc = yaml.safe_load(accounts_file.read_text())
    target = (doc.get("targets") or {}).get("kb")
    if not isinstance(target, dict):
        return None
    token, ref = _token(root, "receiver", reuse=True)

    def make(port):
        return ReceiverServer(ServerTls(str(tls / "server.pem"), str(tls / "server.key")), auth="bearer", credential=token, port=port)

    server = _start(make, _port_of(target.get("base_url")), stack)
    target.update(base_url=server.url, credential_ref=ref)
    accounts_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    return accounts_file


def _live_env(root: Path, accounts_file: Path | None) -> tuple[dict[str, str], dict[str, str]]:
    """(the children's environment, the lines a person exports to reach the same workdir)."""
    from billing_assets.defs.event_volume import DEFAULTS

    lines = {
        "DAGSTER_HOME": os.environ["DAGSTER_HOME"],
        "BILLING_SOURCES_FILE": os.environ["BILLING_SOURCES_FILE"],
        "BILLING_DATABASE_URL": os.environ["BILLING_DATABASE_URL"],
    }
    if accounts_file is not None:
        lines["BILLING_ACCOUNTS_FILE"] = str(accounts_file)
        lines.update({name: os.environ.get(name, value) for name, value in REMIT_ENV.items()})
    lines.update({name: os.environ.get(name, value) for name, value in DEFAULTS.items()})
    env = dict(os.environ)
    env.pop("DEMO_KILLBILL_TOKEN", None)  # the receiver's token is a file now
    if accounts_file is None:
        env.pop("BILLING_ACCOUNTS_FILE", None)
    env.update(lines)
    (root / ENV_FILE).write_text("".join(f"export {name}={value}\n" for name, value in lines.items()))
    return env, lines


class _Child:
    def __init__(self, name: str, argv: list[str], root: Path, env: dict[str, str]):
        self.name = name
        self.log_path = root / "logs" / f"{name}.log"
        self.log_path.parent.mkdir(exist_ok=True)
        with self.log_path.open("ab") as log:
            # Its own session: Ctrl-C in the terminal reaches only us, and we stop it (and its own children) in order.
            self.process = subprocess.Popen(
                argv, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _stop_children(children: list[_Child], timeout_s: float = 30.0) -> None:
    """SIGTERM each child (each stops its code server), then whatever is left of its process group."""
    for child in children:
        if child.process.poll() is None:
            child.process.terminate()
    deadline = time.monotonic() + timeout_s
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait(timeout=10)
    for child in children:  # a code server or run worker that outlived its parent
        pgid = child.process.pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not _group_alive(pgid):
                break
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            until = time.monotonic() + 5
            while _group_alive(pgid) and time.monotonic() < until:
                time.sleep(0.1)


def _graphql(url: str, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps({"query": query, "variables": variables or {}}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    if body.get("errors"):
        raise ValueError(f"GraphQL errors: {body['errors']}")
    return body["data"]


def _wait_ready(url: str, children: list[_Child], stop: threading.Event, timeout_s: float) -> dict | None:
    """The repository once the webserver serves it and the daemon's sensor, schedule and queue loops are healthy."""
    deadline = time.monotonic() + timeout_s
    waiting_for = "the webserver"
    while not stop.is_set():
        for child in children:
            if child.process.poll() is not None:
                print(f"error: {child.name} exited with {child.process.returncode}; last lines of {child.log_path}:\n{child.tail()}",
                      file=sys.stderr)
                return None
        if time.monotonic() > deadline:
            print(f"error: gave up after {timeout_s:.0f}s waiting for {waiting_for} (logs in {children[0].log_path.parent})", file=sys.stderr)
            return None
        try:
            data = _graphql(url, STATE_QUERY)
            nodes = (data.get("repositoriesOrError") or {}).get("nodes") or []
            healthy = {d["daemonType"] for d in data["instance"]["daemonHealth"]["allDaemonStatuses"] if d["healthy"]}
            if not nodes:
                waiting_for = "the webserver to load the code location"
            elif not set(SENSOR_DAEMONS) <= healthy:
                waiting_for = "dagster-daemon (" + ", ".join(sorted(set(SENSOR_DAEMONS) - healthy)) + ")"
            else:
                return nodes[0]
        except (OSError, urllib.error.URLError, ValueError, KeyError, TypeError):
            pass
        stop.wait(0.5)
    return None


def _turn_on(url: str, repository: dict) -> tuple[int, int]:
    """Start any sensor or schedule that is stopped (a resumed DAGSTER_HOME remembers a stop from the UI)."""
    base = {"repositoryName": repository["name"], "repositoryLocationName": repository["location"]["name"]}
    for sensor in repository["sensors"]:
        if sensor["sensorState"]["status"] != "RUNNING":
            _graphql(url, START_SENSOR, {"selector": {**base, "sensorName": sensor["name"]}})
    for schedule in repository["schedules"]:
        if schedule["scheduleState"]["status"] != "RUNNING":
            _graphql(url, START_SCHEDULE, {"selector": {**base, "scheduleName": schedule["name"]}})
    return len(repository["sensors"]), len(repository["schedules"])


def _go_live(root: Path, host: str, port: int, stack: ExitStack, resumable: bool) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.signal(sig, lambda *_: stop.set())
        stack.callback(signal.signal, sig, previous)
    accounts_file = _live_receiver(root, stack)
    env, lines = _live_env(root, accounts_file)
    (root / "workspace.yaml").write_text(WORKSPACE_YAML.format(python=sys.executable))
    bin_dir = Path(sys.executable).parent
    children: list[_Child] = []
    stack.callback(_stop_children, children)  # before the exporters stop (the stack unwinds in reverse)
    children.append(_Child("dagster-daemon", [str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"], root, env))
    children.append(_Child(
        "dagster-webserver", [str(bin_dir / "dagster-webserver"), "-w", "workspace.yaml", "-h", host, "-p", str(port)], root, env
    ))
    local = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    url = f"http://{f'[{local}]' if ':' in local else local}:{port}"
    print(f"\nstarting dagster-daemon and dagster-webserver (logs in {root / 'logs'}) ...")
    sys.stdout.flush()
    repository = _wait_ready(f"{url}/graphql", children, stop, timeout_s=300)
    if repository is None:
        return 0 if stop.is_set() else 1
    sensors, schedules = _turn_on(f"{url}/graphql", repository)
    print(f"Dagster UI: {url}")
    print(f"  {sensors} sensors and {schedules} schedules running; the exporters serve live traffic, so")
    print(f"  {url}/assets/usage_minute_buckets?view=partitions turns green minute by minute (collection_sensor, every 30 s;")
    print("  the demo left the last closed minute to it)")
    if accounts_file is None:
        print("  (no accounts file in this workdir: remittance runs will fail until BILLING_ACCOUNTS_FILE names one)")
    print(f"environment for `dagster dev -w {root / 'workspace.yaml'}` and the billing CLI on this workdir (also in {root / ENV_FILE}):")
    for name, value in lines.items():
        print(f"  export {name}={value}")
    how = f"`billing demo --ui --workdir {root}` resumes it" if resumable else "pass --workdir to keep it for later"
    print(f"Ctrl-C or SIGTERM stops the UI, the daemon and the exporters; {how}.")
    sys.stdout.flush()
    while not stop.wait(1.0):
        for child in children:
            if child.process.poll() is not None:
                print(f"error: {child.name} exited with {child.process.returncode}; last lines of {child.log_path}:\n{child.tail()}",
                      file=sys.stderr)
                return 1
    print("stopping the UI, the daemon and the exporters ...")
    sys.stdout.flush()
    return 0


def _materialize_and_report(entries: list[dict], start, end, started: float) -> int:
    import dagster as dg

    from billing_assets.defs.runs import materialize_range
    from billing_assets.cli.summary import human_bytes, source_totals
    from billing_assets.defs.automation.source_partitions import sync_instance
    from billing_assets.defs.resources import BillingStore
    from billing_assets.definitions import defs
    from billing_assets.registry.model import load_registry

    store = BillingStore()
    instance = dg.DagsterInstance.get()
    changes = sync_instance(instance, load_registry(os.environ["BILLING_SOURCES_FILE"]))
    print(f"registry: {len(entries)} sources, partitions added {list(changes.add)}")
    print(f"window:   [{format_rfc3339(start)}, {format_rfc3339(end)}), one Dagster run per source")
    for entry in entries:
        result = materialize_range(defs, instance, entry["source_id"], start, end, raise_on_error=False, log_level="WARNING")
        state = "ok" if result.success else "FAILED"
        print(f"  run {result.run_id[:8]} {entry['source_id']} ({entry['auth_mode']}, {entry['base_url']} as {entry['server_name']}): {state}")
        if not result.success:
            return 1
    engine = store.engine()
    first = entries[0]["source_id"]
    before = source_totals(engine, first, start, end)["ledger_entries"]
    replay = materialize_range(defs, instance, first, start, end, raise_on_error=False, log_level="WARNING")
    after = source_totals(engine, first, start, end)["ledger_entries"]
    minutes = int((end - start) // MINUTE)
    print()
    print(f"{'source':<10} {'windows':>7} {'samples':>8} {'buckets':>8} {'bytes':>11} {'entries':>8} {'amount':>16}")
    for entry in entries:
        totals = source_totals(engine, entry["source_id"], start, end)
        print(
            f"{entry['source_id']:<10} {minutes:>7} {totals['samples']:>8} {totals['buckets']:>8} "
            f"{human_bytes(totals['bytes']):>11} {totals['ledger_entries']:>8} {totals['amount']:>12} USD"
        )
    print()
    verdict = "no double charge" if after == before else "LEDGER CHANGED ON REPLAY"
    print(f"replayed {first}: run {'ok' if replay.success else 'FAILED'}, ledger entries {before} -> {after} ({verdict})")
    print(f"done in {time.monotonic() - started:.1f}s; dagster home {os.environ['DAGSTER_HOME']}")
    sys.stdout.flush()
    return 0 if replay.success and after == before else 1
