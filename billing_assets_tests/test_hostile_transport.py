"""Hostile and broken exporters cannot hang a run, exhaust memory or store what
the databases disagree on (issue 11, items 2-7).

Every case is a real TLS exporter on loopback (support/hostile_exporter.py)
serving one scripted fault. Each is fetched through the real client; the
cases where the damage is a run's (a hang, a bomb, a crash at insert, a row
one database stores and the other refuses) also run through a real Dagster
run on SQLite and PostgreSQL, which must fail, record why against the
source, write nothing, and succeed once the exporter behaves again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from billing_assets.registry.model import RegistryError, parse_registry
from billing_assets.transport.client import (
    PAGE_FLOOR,
    ExporterClient,
    RetryPolicy,
    max_pages,
    parse_retry_after,
)
from billing_assets.transport.envelope import MAX_TOTAL
from billing_assets.transport.errors import SourceFetchError
from billing_assets_tests.support.hostile_exporter import (
    CorruptGzip,
    Drip,
    FreshCursors,
    GzipBomb,
    HostileExporter,
    HugeBody,
    Refuse,
    Tamper,
)
from billing_assets_tests.support.outcomes import checkpoint, failure_text, nothing_written, rows_written, run_minutes

SID = "hostile-1"
MIB = 1 << 20
FAST = RetryPolicy(attempts=2, backoff_s=0.01, max_backoff_s=0.01)
MINUTE = timedelta(minutes=1)


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    exporter = HostileExporter(tmp_path, SID).start()
    monkeypatch.setenv(exporter.token_variable, exporter.token)
    yield exporter
    exporter.stop()


def _entry(exporter: HostileExporter, window_start: datetime, **overrides) -> dict:
    return exporter.registry_entry(window_start - timedelta(hours=1), **overrides)


def _fetch(exporter, window_start, retry=FAST, **overrides) -> list:
    source = parse_registry({"sources": [_entry(exporter, window_start, **overrides)]}).get(SID)
    with ExporterClient(source, retry) as client:
        return list(client.iter_window(window_start, window_start + MINUTE))


def _refused(exporter, window_start, retry=FAST, **overrides) -> str:
    with pytest.raises(SourceFetchError) as failed:
        _fetch(exporter, window_start, retry, **overrides)
    message = str(failed.value)
    assert message.startswith(f"source {SID!r}: ")
    assert exporter.token not in message
    return message


def test_a_behaving_hostile_exporter_is_fetched(hostile, recent_hour):
    """The control: every refusal below is the fault's, not the harness's."""
    pages = _fetch(hostile, recent_hour)
    assert len(pages) == 1 and sum(len(item.samples) for item in pages[0].page.items) == 8


# -- (a) total deadline -----------------------------------------------------------------------


@pytest.mark.parametrize("headers", [False, True], ids=["body", "headers-and-body"])
def test_a_dripping_exporter_hits_the_total_deadline(hostile, recent_hour, headers):
    # ~1.2 KB at 20 bytes/s: a minute per attempt; every single read is fast.
    hostile.fault = Drip(every_s=0.05, headers=headers)
    message = _refused(hostile, recent_hour, request_timeout="1s")
    assert "timed out after 1s on /v1/snapshots/window: total deadline" in message
    assert "(gave up after 2 attempts)" in message
    assert len(hostile.heard) == 2, "a deadline miss is retryable"


# -- (b) decoded page size --------------------------------------------------------------------

RSS_PROBE = """
import json, sys
from datetime import datetime
from billing_assets.registry.model import parse_registry
from billing_assets.transport.client import ExporterClient, RetryPolicy
from billing_assets.transport.errors import SourceFetchError

def status(field):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) for line in lines if line.startswith(field + ":"))

entry, since, until = json.loads(sys.argv[1]), datetime.fromisoformat(sys.argv[2]), datetime.fromisoformat(sys.argv[3])
client = ExporterClient(parse_registry({"sources": [entry]}).sources[0], RetryPolicy(attempts=1))
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # reset the peak RSS (VmHWM) to what is resident now: imports do not count
before = status("VmRSS")
try:
    error = None
    pages = list(client.iter_window(since, until))
except SourceFetchError as exc:
    error = str(exc)
print(json.dumps({"error": error, "peak_growth_kib": status("VmHWM") - before}))
"""


def _fetch_in_subprocess(exporter, window_start, **overrides) -> dict:
    """The client alone in a fresh process, so its peak RSS is the fetch's and nothing else's."""
    entry = _entry(exporter, window_start, **overrides)
    args = [json.dumps(entry), window_start.isoformat(), (window_start + MINUTE).isoformat()]
    done = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, *args], capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_gzip_bomb_is_refused_at_the_cap_with_bounded_memory(hostile, recent_hour):
    bomb = hostile.fault = GzipBomb(decoded_bytes=1 << 30)  # ~1 MB on the wire, 1 GiB decoded
    outcome = _fetch_in_subprocess(hostile, recent_hour, max_page_bytes=4 * MIB)
    assert outcome["error"] is not None
    assert "page 0: response body exceeds max_page_bytes" in outcome["error"] and "bytes decoded" in outcome["error"]
    assert outcome["peak_growth_kib"] < 96 * 1024, f"peak RSS grew {outcome['peak_growth_kib'] // 1024} MiB"
    assert bomb.sent_bytes < 300_000, "the client must hang up at the cap, not drain the bomb"
    print(f"gzip bomb: peak RSS growth {outcome['peak_growth_kib'] / 1024:.1f} MiB, {bomb.sent_bytes:,} bytes received")


@pytest.mark.parametrize("declared", [False, True], ids=["until-close", "content-length"])
def test_a_huge_plain_body_is_refused_at_the_cap(hostile, recent_hour, declared):
    hostile.fault = HugeBody(size=64 * MIB, declared=declared)
    message = _refused(hostile, recent_hour, max_page_bytes=MIB)
    how = "declared by Content-Length" if declared else "decoded"
    assert "page 0: response body exceeds max_page_bytes" in message and how in message
    assert len(hostile.heard) == 1, "an oversized page is not retried"


@pytest.mark.parametrize("value, problem", [(0, "greater than 0"), (2**31, "less than or equal to")])
def test_max_page_bytes_is_validated(hostile, recent_hour, value, problem):
    with pytest.raises(RegistryError, match=f"source {SID!r}: field max_page_bytes: .*{problem}"):
        parse_registry({"sources": [_entry(hostile, recent_hour, max_page_bytes=value)]})
    assert parse_registry({"sources": [_entry(hostile, recent_hour)]}).get(SID).max_page_bytes == 64 * MIB


# -- (c) cursors and pages per window -----------------------------------------------------------


def test_an_oversized_cursor_is_refused(hostile, recent_hour):
    hostile.fault = FreshCursors(chars=60_000, give_up_after=50)
    message = _refused(hostile, recent_hour)
    assert "page 0: schema violation: next_cursor: String should have at most 4096 characters" in message


def test_fresh_cursors_forever_stop_at_the_page_bound(hostile, recent_hour):
    hostile.fault = FreshCursors(chars=4096, give_up_after=5 * PAGE_FLOOR)
    message = _refused(hostile, recent_hour)
    assert f"more than {PAGE_FLOOR} pages for the window" in message and "bound: max(1000, 4 x" in message
    assert len(hostile.heard) == PAGE_FLOOR


def test_the_page_bound_follows_the_window():
    assert max_pages(timedelta(minutes=2), 100) == PAGE_FLOOR
    assert max_pages(timedelta(days=1), 100) == 4 * 865  # 86,401 snapshots at most, 100 a page
    assert max_pages(timedelta(hours=6), 1) == 4 * (6 * 3600 + 1)


# -- (d) envelope validation ------------------------------------------------------------------

SAMPLE = "items.0.samples.0"
LE_MAX = "Input should be less than or equal to 9223372036854775807"
CONTROL = "contains a control character"
TAMPERED = [
    pytest.param(Tamper("uplink_bytes_total", 2**64), f"{SAMPLE}.uplink_bytes_total: {LE_MAX}", id="total-2**64"),
    pytest.param(Tamper("downlink_bytes_total", 2**63), f"{SAMPLE}.downlink_bytes_total: {LE_MAX}", id="total-2**63"),
    pytest.param(Tamper("email", "x" * 50_000 + "@example.test"),
                 f"{SAMPLE}.email: String should have at most 320 characters", id="email-50KB"),
    pytest.param(Tamper("uuid", "user\x00a"), f"{SAMPLE}.uuid: {CONTROL}", id="nul-uuid"),
    pytest.param(Tamper("email", "a\x00@example.test"), f"{SAMPLE}.email: {CONTROL}", id="nul-email"),
    pytest.param(Tamper("inbound_tag", "vless\x1fin"), f"{SAMPLE}.inbound_tag: {CONTROL}", id="unit-separator-tag"),
    pytest.param(Tamper("node_id", "node-hostile-1\x00", envelope=True), f"node_id: {CONTROL}", id="nul-node_id"),
    pytest.param(Tamper("env", "te\x00st", envelope=True), f"env: {CONTROL}", id="nul-env"),
    pytest.param(Tamper("source_id", "hostile\x00", envelope=True), f"source_id: {CONTROL}", id="nul-source_id"),
]


@pytest.mark.parametrize("fault, reason", TAMPERED)
def test_an_unstorable_field_is_refused_by_name(hostile, recent_hour, fault, reason):
    hostile.fault = fault
    message = _refused(hostile, recent_hour)
    assert "page 0: schema violation: " in message and reason in message


@pytest.mark.parametrize("fault", [
    Tamper("uplink_bytes_total", MAX_TOTAL),
    Tamper("email", "e" * 307 + "@example.test"),
    Tamper("uuid", "üser-ñame-\u2603"),
], ids=["total-2**63-1", "email-320", "non-ascii"])
def test_the_limits_refuse_nothing_legitimate(hostile, recent_hour, fault):
    hostile.fault = fault
    assert len(_fetch(hostile, recent_hour)) == 1


# -- (e) undecodable bodies -------------------------------------------------------------------


def test_a_corrupt_gzip_body_is_a_named_error(hostile, recent_hour):
    hostile.fault = CorruptGzip()
    message = _refused(hostile, recent_hour)
    assert "page 0: response body cannot be decoded (corrupt Content-Encoding" in message
    assert len(hostile.heard) == 1


# -- (f) Retry-After ----------------------------------------------------------------------------


def _http_date(at: datetime) -> str:
    return at.strftime("%a, %d %b %Y %H:%M:%S GMT")


def _two_seconds_from_now() -> str:
    return _http_date(datetime.now(timezone.utc) + timedelta(seconds=2))


@pytest.mark.parametrize("status, retry_after", [(429, lambda: "1"), (503, _two_seconds_from_now)],
                         ids=["429-seconds", "503-http-date"])
def test_retry_after_is_honoured(hostile, recent_hour, status, retry_after):
    hostile.fault = Refuse(status, retry_after(), times=1)
    assert len(_fetch(hostile, recent_hour)) == 1
    first, second = hostile.heard[0].at, hostile.heard[1].at
    assert second - first >= 0.9, "retried before the exporter's Retry-After"


def test_retry_after_beyond_the_cap_gives_up_at_once(hostile, recent_hour):
    hostile.fault = Refuse(429, "30")
    policy = RetryPolicy(attempts=4, backoff_s=0.01, max_retry_after_s=5)
    message = _refused(hostile, recent_hour, policy)
    assert message.endswith("exporter answered HTTP 429 (gave up after 1 attempt; last Retry-After 30s exceeds the 5s cap)")
    assert len(hostile.heard) == 1


def test_giving_up_names_the_last_retry_after(hostile, recent_hour):
    hostile.fault = Refuse(429, "1")
    message = _refused(hostile, recent_hour, RetryPolicy(attempts=3, backoff_s=0.01))
    assert message.endswith("exporter answered HTTP 429 (gave up after 3 attempts; last Retry-After 1s)")


def test_time_across_retries_is_bounded(hostile, recent_hour):
    hostile.fault = Refuse(503, "1")
    message = _refused(hostile, recent_hour, RetryPolicy(attempts=10, backoff_s=0.01, max_total_wait_s=1.5))
    assert "HTTP 503 (gave up after 2 attempts; last Retry-After 1s)" in message
    assert len(hostile.heard) == 2


def test_retry_after_forms():
    now = datetime(2015, 10, 21, 7, 27, 30, tzinfo=timezone.utc)
    assert parse_retry_after("30", now) == 30
    assert parse_retry_after(" 0 ", now) == 0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 30
    assert parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now) == 0
    assert parse_retry_after("9" * 5000, now) == 1e9
    for unusable in (None, "", "-5", "1.5", "soon", "\u00b2"):
        assert parse_retry_after(unusable, now) is None


# -- through real Dagster runs, on both databases ---------------------------------------------

RUN_CASES = [
    pytest.param(GzipBomb(decoded_bytes=256 * MIB), {"max_page_bytes": 2 * MIB},
                 ("exceeds max_page_bytes", "bytes decoded"), id="gzip-bomb"),
    pytest.param(Drip(every_s=0.05), {"request_timeout": "1s"},
                 ("total deadline", "/v1/snapshots/window"), id="drip"),
    pytest.param(Tamper("uplink_bytes_total", 2**64), {},
                 ("uplink_bytes_total", "less than or equal to 9223372036854775807"), id="total-2**64"),
    pytest.param(Tamper("uuid", "user\x00a"), {}, ("samples.0.uuid", "control character"), id="nul-uuid"),
]


def _register_hostile(billing_env, window_start: datetime, **overrides) -> HostileExporter:
    exporter = HostileExporter(billing_env.root, SID).start()
    billing_env.fleet.monkeypatch.setenv(exporter.token_variable, exporter.token)
    billing_env.write_registry([_entry(exporter, window_start, **overrides)])
    billing_env.sync_partitions()
    return exporter


def _run_traced(billing_env, minute):
    """The run, with the peak of Python allocations during it (bodies and decoded chunks are Python bytes)."""
    tracemalloc.start()
    try:
        result = run_minutes(billing_env, SID, minute, minute + MINUTE)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fault, overrides, reason", RUN_CASES)
def test_a_hostile_exporter_fails_its_run_writes_nothing_and_recovers(billing_env, recent_hour, fault, overrides, reason):
    minute = recent_hour + timedelta(minutes=5)
    exporter = _register_hostile(billing_env, recent_hour, **overrides)
    try:
        exporter.fault = fault
        if isinstance(fault, GzipBomb):
            result, peak = _run_traced(billing_env, minute)
            assert peak < 64 * MIB, f"traced peak {peak / MIB:.0f} MiB during a {fault.decoded_bytes // MIB} MiB bomb"
        else:
            result = run_minutes(billing_env, SID, minute, minute + MINUTE)

        assert not result.success
        engine = billing_env.engine
        assert nothing_written(engine, SID), rows_written(engine, SID)
        error = checkpoint(engine, SID)["last_error"]
        assert error.startswith(f"source {SID!r}: ") and all(fragment in error for fragment in reason), error
        assert all(fragment in failure_text(result) for fragment in reason)

        exporter.fault = None
        recovered = run_minutes(billing_env, SID, minute, minute + MINUTE)
        assert recovered.success, failure_text(recovered)
        assert rows_written(engine, SID)["billing_ledger"] > 0
        assert checkpoint(engine, SID)["last_error"] is None
    finally:
        exporter.stop()
