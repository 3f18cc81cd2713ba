"""The reference exporter over real HTTPS on loopback: the contract the
pipeline is built against (DESIGN.md "Upstream contract"), its auth, and the
faults the pipeline tests rely on being able to provoke."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from billing_assets.exporter import (
    ExporterServer,
    Faults,
    TlsMaterial,
    TrafficShape,
    generate_tls_material,
    write_unrelated_ca_bundle,
)
from billing_assets.exporter.api import SnapshotApi
from billing_assets.exporter.server import ServerTls
from billing_assets_tests.support.sensors import FakeClock

SNI = "exporter.test"
TOKEN = "test-token-not-a-secret"
NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=timezone.utc)
WINDOW_START = datetime(2026, 11, 21, 10, 0, 0, tzinfo=timezone.utc)


def shape(**overrides: object) -> TrafficShape:
    params: dict = {"node_id": "node-a", "env": "test", "source_id": "src-a", "seed": 7}
    params.update(overrides)
    return TrafficShape(**params)


def client_for(tls: TlsMaterial, *, ca: str | None = None, client_cert: str | None = None) -> httpx.Client:
    context = ssl.create_default_context(cafile=ca or tls.ca_cert)
    if client_cert:
        context.load_cert_chain(client_cert)
    return httpx.Client(verify=context, timeout=5)


def get(client: httpx.Client, server: ExporterServer, path: str, token: str | None = TOKEN, sni: str = SNI, **params):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.get(f"{server.url}{path}", params=params, headers=headers, extensions={"sni_hostname": sni})


def fetch_window(client, server, since: datetime, until: datetime, limit: int) -> list[dict]:
    """Follow next_cursor to the end, returning every page body."""
    pages, cursor = [], None
    while True:
        params = {"since": since.isoformat(), "until": until.isoformat(), "limit": limit}
        if cursor:
            params["cursor"] = cursor
        response = get(client, server, "/v1/snapshots/window", **params)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body)
        if not body["has_more"]:
            assert body["next_cursor"] is None
            return pages
        cursor = body["next_cursor"]


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> TlsMaterial:
    return generate_tls_material(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def server(tls, clock) -> Iterator[ExporterServer]:
    with ExporterServer(shape(), tls, auth="bearer", bearer_token=TOKEN, clock=clock) as running:
        yield running


@pytest.fixture
def client(tls) -> Iterator[httpx.Client]:
    with client_for(tls) as c:
        yield c


def test_pagination_covers_window_exactly_once(server, client):
    """A window fetched page by page must equal the generator's items: no
    snapshot skipped at a page boundary, none served twice."""
    until = WINDOW_START + timedelta(minutes=30)
    pages = fetch_window(client, server, WINDOW_START, until, limit=7)
    served = [item for page in pages for item in page["items"]]
    assert served == list(server.shape.iter_items(WINDOW_START, until))
    assert len(served) == 120 and len(pages) == 18
    assert served[0]["collected_at"] == "2026-11-21T10:00:00Z"
    assert served[-1]["collected_at"] == "2026-11-21T10:29:45Z"
    for page in pages:
        assert (page["source_id"], page["node_id"], page["env"]) == ("src-a", "node-a", "test")
        assert (page["window_start"], page["window_end"]) == ("2026-11-21T10:00:00Z", "2026-11-21T10:30:00Z")
        assert page["emitted_at"] == "2026-11-21T12:00:00Z"


def test_window_bounds_are_inclusive_exclusive(server, client):
    since, until = WINDOW_START + timedelta(seconds=1), WINDOW_START + timedelta(seconds=45)
    (page,) = fetch_window(client, server, since, until, limit=100)
    assert [i["collected_at"] for i in page["items"]] == ["2026-11-21T10:00:15Z", "2026-11-21T10:00:30Z"]


def test_counters_monotone_except_at_restarts():
    """Counters only fall at an exporter restart (to 0) or when a late joiner's
    counter is born for the day; everything else is monotone."""
    traffic = shape(users=12)
    day = datetime(2026, 11, 21, tzinfo=timezone.utc)
    restarts = {t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in traffic.model.restarts_between(day, day + timedelta(days=1))}
    assert restarts
    previous: dict[tuple, tuple[int, int]] = {}
    first_seen: set[tuple] = set()
    for item in traffic.iter_items(day, day + timedelta(days=1)):
        for sample in item["samples"]:
            key = (sample["uuid"], sample["inbound_tag"])
            totals = (sample["uplink_bytes_total"], sample["downlink_bytes_total"])
            assert min(totals) >= 0
            if item["collected_at"] in restarts:
                assert totals == (0, 0)
            elif key in previous and key in first_seen:
                assert totals[0] >= previous[key][0] and totals[1] >= previous[key][1], item["collected_at"]
            first_seen.add(key)
            previous[key] = totals


def test_late_joiners_and_idle_users():
    traffic = shape(users=20, late_join_fraction=0.25, idle_fraction=0.1)
    midnight = datetime(2026, 11, 21, tzinfo=timezone.utc)
    early = {(s["uuid"], s["inbound_tag"]) for s in traffic.snapshot_at(midnight)}
    late = {(s["uuid"], s["inbound_tag"]) for s in traffic.snapshot_at(midnight + timedelta(hours=23, minutes=30))}
    assert early < late
    assert len({u for u, _ in late}) == 20 and len({u for u, _ in early}) == 15
    later = traffic.snapshot_at(midnight + timedelta(hours=23, minutes=45))
    idle = {s["uuid"] for s in later if s["uplink_bytes_total"] == 0 and s["downlink_bytes_total"] == 0}
    assert len(idle) == 2


def test_same_seed_serves_same_bytes(tls, clock):
    params = {"since": "2026-11-21T10:00:00Z", "until": "2026-11-21T10:05:00Z", "limit": "1000"}
    bodies = []
    for seed in (7, 7, 8):
        with ExporterServer(shape(seed=seed), tls, bearer_token=TOKEN, clock=clock) as srv, client_for(tls) as c:
            bodies.append(get(c, srv, "/v1/snapshots/window", **params).content)
    assert bodies[0] == bodies[1]
    assert bodies[0] != bodies[2]


def test_windows_anywhere_in_time_are_cheap():
    far = datetime(2150, 1, 1, tzinfo=timezone.utc)
    items = list(shape(users=50).iter_items(far, far + timedelta(minutes=1)))
    assert [i["collected_at"] for i in items] == [f"2150-01-01T00:00:{s:02d}Z" for s in (0, 15, 30, 45)]


def test_prerendered_json_matches_dicts():
    model = shape(users=30).model
    start = model.index_at_or_before(WINDOW_START)
    rendered = model.items_json(start, start + 40)
    assert rendered == [json.dumps(i, separators=(",", ":")) for i in model.items(start, start + 40)]


def test_bearer_auth(server, client):
    assert get(client, server, "/v1/snapshots/latest", token=None).status_code == 401
    wrong = get(client, server, "/v1/snapshots/latest", token="wrong")
    assert wrong.status_code == 403 and TOKEN not in wrong.text
    assert get(client, server, "/v1/snapshots/latest").status_code == 200
    assert get(client, server, "/healthz", token=None).status_code == 200


def test_mtls_requires_a_client_certificate_from_the_pinned_ca(tls, clock, tmp_path):
    other = generate_tls_material(tmp_path / "other")
    with ExporterServer(shape(), tls, auth="mtls", clock=clock) as srv:
        with client_for(tls) as anonymous, pytest.raises(httpx.TransportError):
            get(anonymous, srv, "/v1/snapshots/latest", token=None)
        with client_for(tls, client_cert=other.client_cert_key) as stranger, pytest.raises(httpx.TransportError):
            get(stranger, srv, "/v1/snapshots/latest", token=None)
        with client_for(tls, client_cert=tls.client_cert_key) as member:
            assert get(member, srv, "/v1/snapshots/latest", token=None).status_code == 200


def test_server_name_and_ca_are_verified(server, client, tls, tmp_path):
    with pytest.raises(httpx.ConnectError):
        get(client, server, "/healthz", sni="other.test")
    with pytest.raises(httpx.ConnectError):
        client.get(f"{server.url}/healthz")  # the IP is not in the certificate
    with client_for(tls, ca=write_unrelated_ca_bundle(tmp_path / "other-ca.pem")) as wrong_ca:
        with pytest.raises(httpx.ConnectError):
            get(wrong_ca, server, "/healthz")


def test_expired_server_certificate_is_refused(tls, clock, tmp_path):
    expired = generate_tls_material(
        tmp_path,
        ca=tls.ca,
        not_before=NOW - timedelta(days=30),
        not_after=datetime.now(timezone.utc) - timedelta(days=1),
    )
    with ExporterServer(shape(), expired, bearer_token=TOKEN, clock=clock) as srv, client_for(tls) as c:
        with pytest.raises(httpx.ConnectError):
            get(c, srv, "/healthz")


def test_private_keys_are_owner_only(tls):
    for path in (tls.server_key, tls.client_cert_key):
        assert os.stat(path).st_mode & 0o777 == 0o600


def test_latest_snapshot(server, client, clock):
    clock.now = NOW + timedelta(seconds=20)
    body = get(client, server, "/v1/snapshots/latest").json()
    assert set(body) == {"node_id", "env", "collected_at", "samples"}
    assert (body["node_id"], body["env"], body["collected_at"]) == ("node-a", "test", "2026-11-21T12:00:15Z")
    assert body["samples"] == server.shape.snapshot_at(NOW + timedelta(seconds=15))


@pytest.mark.parametrize(
    "query, message",
    [
        ({"until": "2026-11-21T10:00:00Z"}, "missing parameter: since"),
        ({"since": "2026-11-21T10:00:00", "until": "2026-11-21T11:00:00Z"}, "since"),
        ({"since": "2026-11-21T11:00:00Z", "until": "2026-11-21T10:00:00Z"}, "until"),
        ({"since": "2026-11-21T10:00:00Z", "until": "2026-11-21T11:00:00Z", "limit": "0"}, "limit"),
        ({"since": "2026-11-21T10:00:00Z", "until": "2026-11-21T11:00:00Z", "cursor": "%%%"}, "cursor"),
    ],
)
def test_bad_parameters_are_400(server, client, query, message):
    response = get(client, server, "/v1/snapshots/window", **query)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_cursor_is_bound_to_its_window(server, client):
    first = get(client, server, "/v1/snapshots/window", since="2026-11-21T10:00:00Z", until="2026-11-21T11:00:00Z", limit=5)
    cursor = first.json()["next_cursor"]
    moved = get(
        client, server, "/v1/snapshots/window", since="2026-11-21T10:00:15Z", until="2026-11-21T11:00:00Z", cursor=cursor
    )
    assert moved.status_code == 400
    same = get(
        client, server, "/v1/snapshots/window", since="2026-11-21T10:00:00+00:00", until="2026-11-21T11:00:00Z", cursor=cursor
    )
    assert same.status_code == 200 and same.json()["items"][0]["collected_at"] == "2026-11-21T10:01:15Z"


def test_fail_first_n_then_recovers(server, client):
    server.faults = Faults(fail_first_n=2)
    codes = [get(client, server, "/v1/snapshots/latest").status_code for _ in range(3)]
    assert codes == [503, 503, 200]
    server.faults = Faults(fail_first_n=1)  # installing faults restarts the count
    assert get(client, server, "/v1/snapshots/latest").status_code == 503


def test_stop_and_restart_keep_the_url(server, client):
    """An outage at the transport level: connection refused, then the same
    URL serves again."""
    url = server.url
    server.stop()
    with pytest.raises(httpx.ConnectError):
        get(client, server, "/healthz")
    server.start()
    assert server.url == url and get(client, server, "/healthz").status_code == 200


def test_down_and_error_rate(server, client):
    server.faults = Faults(down=True)
    assert get(client, server, "/healthz").status_code == 503
    assert get(client, server, "/v1/snapshots/latest").status_code == 503
    server.faults = Faults(error_rate=0.5)
    codes = [get(client, server, "/v1/snapshots/latest").status_code for _ in range(4)]
    assert codes == [200, 503, 200, 503]


def test_wrong_node_id_and_env(server, client):
    server.faults = Faults(wrong_node_id="node-b", wrong_env="prod")
    body = get(client, server, "/v1/snapshots/latest").json()
    assert (body["node_id"], body["env"]) == ("node-b", "prod")
    server.faults = Faults(wrong_node_id_on_page=1)
    pages = fetch_window(client, server, WINDOW_START, WINDOW_START + timedelta(minutes=3), limit=5)
    assert [p["node_id"] for p in pages] == ["node-a", "node-a-imposter", "node-a"]


def test_late_seconds_hides_recent_items_until_the_clock_moves(server, client, clock):
    clock.now = WINDOW_START + timedelta(minutes=5)
    server.faults = Faults(late_seconds=60)
    window = (WINDOW_START, WINDOW_START + timedelta(minutes=10))
    (page,) = fetch_window(client, server, *window, limit=1000)
    assert page["items"][-1]["collected_at"] == "2026-11-21T10:04:00Z" and len(page["items"]) == 17
    clock.now += timedelta(minutes=10)
    (page,) = fetch_window(client, server, *window, limit=1000)
    assert len(page["items"]) == 40


def test_duplicate_and_conflicting_items(server, client):
    window = (WINDOW_START, WINDOW_START + timedelta(minutes=1))
    clean = fetch_window(client, server, *window, limit=10)[0]["items"]
    server.faults = Faults(duplicate_items=True)
    duplicated = fetch_window(client, server, *window, limit=10)[0]["items"]
    assert duplicated == clean + clean[:1]
    server.faults = Faults(conflicting_totals=True)
    conflicting = fetch_window(client, server, *window, limit=10)[0]["items"]
    for before, after in zip(clean, conflicting):
        bump = 1 if after["collected_at"][-3:-1] in ("00", "30") else 0
        assert after["samples"][0]["uplink_bytes_total"] == before["samples"][0]["uplink_bytes_total"] + bump
        assert after["samples"][1:] == before["samples"][1:]


def test_malformed_json_and_schema_violation(server, client):
    params = {"since": "2026-11-21T10:00:00Z", "until": "2026-11-21T10:01:00Z"}
    server.faults = Faults(malformed_json=True)
    response = get(client, server, "/v1/snapshots/window", **params)
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)
    server.faults = Faults(schema_violation=True)
    items = get(client, server, "/v1/snapshots/window", **params).json()["items"]
    assert "collected_at" not in items[0]
    assert items[1]["samples"][0]["uplink_bytes_total"] < 0
    assert isinstance(items[2]["samples"][0]["downlink_bytes_total"], str)


def test_api_without_sockets():
    api = SnapshotApi(shape())
    reply = api.window({"since": "2026-11-21T10:00:00Z", "until": "2026-11-21T10:00:15Z"}, NOW, Faults())
    assert reply.status == 200 and len(json.loads(reply.body)["items"]) == 1


def test_cli_serves_https(tmp_path):
    """The console entry point mints certs, serves, and stops on SIGTERM
    without printing the token."""
    env = dict(os.environ, EXPORTER_TEST_TOKEN=TOKEN)
    cmd = [sys.executable, "-m", "billing_assets.exporter", "--port", "0", "--generate-certs", str(tmp_path)]
    proc = subprocess.Popen(
        [*cmd, "--token-env", "EXPORTER_TEST_TOKEN"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        lines = []
        while not lines or "listening on" not in lines[-1]:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line)
        url = lines[-1].split("listening on ")[1].split()[0]
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with httpx.Client(verify=context, timeout=5) as c:
            response = c.get(
                f"{url}/v1/snapshots/latest",
                headers={"Authorization": f"Bearer {TOKEN}"},
                extensions={"sni_hostname": SNI},
            )
        assert response.status_code == 200 and response.json()["node_id"] == "node-1"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert TOKEN not in "".join(lines) + out + err


def test_server_tls_object_is_enough(tls, clock):
    """A staging deployment passes plain paths, not generated material."""
    plain = ServerTls(tls.server_cert, tls.server_key, client_ca=tls.ca_cert)
    with ExporterServer(shape(), plain, auth="mtls", clock=clock) as srv:
        with client_for(tls, client_cert=tls.client_cert_key) as c:
            assert get(c, srv, "/healthz", token=None).status_code == 200
