"""Remittance delivery against the real reference receiver: real HTTPS on
loopback, certificates minted at run time, no mocks of project code.

Each fault of the receiver must map to the Outcome the status machine relies
on; dedup must keep the receiver's totals equal to what was meant once; and
the CSV target must never produce two different files, or one file twice.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from billing_assets.delivery.csv_files import (
    HEADER,
    CsvFileConflict,
    CsvLine,
    file_name_for,
    render_batch,
    write_batch_file,
)
from billing_assets.delivery.killbill import DeliveryConfigError, KillBillClient, parse_retry_after
from billing_assets.delivery.outcome import Outcome, UsageRecord
from billing_assets.delivery.targets import CsvTarget, KillBillTarget, Target
from billing_assets.exporter.certs import generate_tls_material, write_unrelated_ca_bundle
from billing_assets.exporter.server import ServerTls
from billing_assets.receiver import ReceiverFaults, ReceiverServer
from billing_assets.receiver.admin import ReceiverAdmin
from billing_assets.receiver.cli import main as receiver_main

TOKEN = "tok-" + uuid.uuid4().hex
BASIC = "remit-user:pw-" + uuid.uuid4().hex
SERVER_NAME = "receiver.test"
HOUR = datetime(2026, 11, 22, 10, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return generate_tls_material(tmp_path_factory.mktemp("receiver-tls"), server_names=(SERVER_NAME,))


@pytest.fixture
def receiver(tls):
    with ReceiverServer(ServerTls(tls.server_cert, tls.server_key), auth="bearer", credential=TOKEN) as server:
        yield server


@pytest.fixture
def token_env(monkeypatch):
    monkeypatch.setenv("REMIT_KB_TOKEN", TOKEN)
    return "env:REMIT_KB_TOKEN"


def kb_target(server: ReceiverServer, tls, credential_ref: str, **overrides) -> KillBillTarget:
    fields = dict(
        kind="killbill",
        base_url=server.url,
        auth_mode="bearer",
        credential_ref=credential_ref,
        ca_bundle_ref=f"file:{tls.ca_cert}",
        server_name=SERVER_NAME,
        request_timeout="2s",
    )
    fields.update(overrides)
    return KillBillTarget(**fields)


def record(quantity: int = 42, subscription: str = "acme-traffic", metric: str = "uplink_bytes", tracking_id: str | None = None):
    return UsageRecord("kb", "acme", subscription, metric, HOUR, quantity, tracking_id or f"t-{uuid.uuid4().hex}")


@pytest.fixture
def client(receiver, tls, token_env):
    with KillBillClient(kb_target(receiver, tls, token_env), name="kb") as kb:
        yield kb


# -- the happy path and dedup ------------------------------------------------


def test_a_record_is_accepted_in_kill_bills_shape_and_queryable(receiver, client, tls):
    sent = record(quantity=123_456_789_012, metric="downlink_bytes")
    outcome = client.send(sent)
    assert (outcome.status, outcome.http_status) == ("accepted", 201)
    with ReceiverAdmin(receiver.url, tls.ca_cert, SERVER_NAME, "bearer", TOKEN) as admin:
        answer = admin.accepted()
        assert admin.totals() == {("acme-traffic", "downlink_bytes"): 123_456_789_012}
    [row] = answer["records"]
    assert row["trackingId"] == sent.tracking_id
    assert (row["subscription"], row["unitType"], row["amount"]) == ("acme-traffic", "downlink_bytes", 123_456_789_012)
    assert row["recordDate"] == "2026-11-22T10:00:00Z"
    assert row["accepted_at"].endswith("Z")


@pytest.mark.parametrize("duplicate_status", [409, 200])
def test_a_resent_tracking_id_is_accepted_but_counted_once(tls, token_env, duplicate_status):
    with ReceiverServer(
        ServerTls(tls.server_cert, tls.server_key), credential=TOKEN, duplicate_status=duplicate_status
    ) as server, KillBillClient(kb_target(server, tls, token_env)) as kb:
        sent = record(quantity=1000)
        first, second = kb.send(sent), kb.send(sent)
        assert first.status == second.status == "accepted"
        assert (first.http_status, second.http_status) == (201, duplicate_status)
        assert server.requests_for(sent.tracking_id) == 2
        assert server.store.accepted_count() == 1
        assert server.totals() == {("acme-traffic", "uplink_bytes"): 1000}
        assert server.store.conflicts() == []


def test_the_receiver_flags_a_tracking_id_resent_with_other_content(receiver, client):
    sent = record(quantity=5)
    client.send(sent)
    changed = UsageRecord(sent.target, sent.account_id, sent.subscription_key, sent.metric, sent.hour, 6, sent.tracking_id)
    assert client.send(changed).status == "accepted"  # Kill Bill would not tell us either
    assert receiver.totals() == {("acme-traffic", "uplink_bytes"): 5}
    assert receiver.store.conflicts() == [sent.tracking_id]


# -- every fault, through the real client ------------------------------------


@pytest.mark.parametrize(
    "faults, status, http_status, detail_part",
    [
        (ReceiverFaults(down=True), "retryable", None, "closed the connection"),
        (ReceiverFaults(fail_5xx=True), "retryable", 503, "unavailable"),
        (ReceiverFaults(fail_5xx=True, status_5xx=500), "retryable", 500, "unavailable"),
        (ReceiverFaults(rate_limit=True, retry_after="7"), "retryable", 429, "rate limited"),
        (ReceiverFaults(refuse_subscriptions={"acme-traffic"}), "refused", 400, "does not exist"),
        (ReceiverFaults(refuse_subscriptions={"acme-traffic"}, refuse_status=404), "refused", 404, "SubscriptionBaseApiException"),
        (ReceiverFaults(accept_then_drop=True), "retryable", None, "may have taken"),
        (ReceiverFaults(delay_s=2.5), "retryable", None, "timed out"),
    ],
    ids=["down", "5xx", "500", "429", "refused", "refused-404", "accept-then-drop", "slow"],
)
def test_each_fault_gives_the_outcome_the_status_machine_expects(receiver, client, faults, status, http_status, detail_part):
    receiver.faults = faults
    outcome = client.send(record())
    assert outcome.status == status, outcome
    assert outcome.http_status == http_status
    assert detail_part in outcome.detail
    assert TOKEN not in outcome.detail
    stored = receiver.store.accepted_count()
    assert stored == (1 if faults.accept_then_drop else 0)


def test_request_timeout_is_a_deadline_for_the_whole_exchange_not_per_read(receiver, tls, token_env):
    # ~190 bytes of answer, 8 bytes every 0.1 s: every single read succeeds
    # well within 1 s, the whole answer takes ~2.4 s.
    receiver.faults = ReceiverFaults(trickle_s=0.1)
    with KillBillClient(kb_target(receiver, tls, token_env, request_timeout="1s")) as kb:
        started = time.monotonic()
        outcome = kb.send(record())
        elapsed = time.monotonic() - started
        assert outcome.status == "retryable", outcome
        assert elapsed < 1.5
        assert receiver.store.accepted_count() == 1  # ambiguous: it was taken
        receiver.faults = None
        assert kb.send(record()).status == "accepted"  # the pool recovered from the cut connection


def test_a_slow_but_in_time_answer_is_accepted(receiver, tls, token_env):
    receiver.faults = ReceiverFaults(delay_s=0.5)
    with KillBillClient(kb_target(receiver, tls, token_env, request_timeout="2s")) as kb:
        assert kb.send(record()).status == "accepted"


def test_429_retry_after_seconds_and_http_date_are_parsed(receiver, client):
    receiver.faults = ReceiverFaults(rate_limit=True, retry_after="7")
    assert client.send(record()).retry_after_s == 7.0
    receiver.faults = ReceiverFaults(rate_limit=True, retry_after=format_datetime(datetime.now(timezone.utc) + timedelta(seconds=90), usegmt=True))
    assert 85 <= client.send(record()).retry_after_s <= 91
    receiver.faults = ReceiverFaults(fail_5xx=True)
    assert client.send(record()).retry_after_s is None


def test_retry_after_edge_cases():
    now = datetime(2026, 11, 22, 10, tzinfo=timezone.utc)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Sun, 22 Nov 2026 10:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Sun, 22 Nov 2026 09:00:00 GMT", now=now) == 0.0  # in the past: now
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("999999") == 3600.0


def test_fail_first_n_is_a_transient_failure_a_resend_recovers(receiver, client):
    receiver.faults = ReceiverFaults(fail_first_n=2)
    sent = record(quantity=9)
    assert [client.send(sent).status for _ in range(3)] == ["retryable", "retryable", "accepted"]
    assert receiver.requests_for(sent.tracking_id) == 3
    assert receiver.totals() == {("acme-traffic", "uplink_bytes"): 9}


def test_accept_then_drop_is_retryable_the_receiver_kept_it_and_the_resend_does_not_double(receiver, client):
    sent = record(quantity=700)
    receiver.faults = ReceiverFaults(accept_then_drop=True)
    assert client.send(sent).status == "retryable"
    assert receiver.totals() == {("acme-traffic", "uplink_bytes"): 700}
    receiver.faults = None
    again = client.send(sent)
    assert (again.status, again.http_status) == ("accepted", 409)
    assert receiver.requests_for(sent.tracking_id) == 2
    assert receiver.totals() == {("acme-traffic", "uplink_bytes"): 700}


def test_refused_subscription_does_not_block_others(receiver, client):
    receiver.faults = ReceiverFaults(refuse_subscriptions={"bad-sub"})
    assert client.send(record(subscription="bad-sub")).status == "refused"
    assert client.send(record(subscription="good-sub")).status == "accepted"
    assert receiver.totals() == {("good-sub", "uplink_bytes"): 42}


def test_a_stopped_receiver_is_retryable_and_the_same_client_recovers_when_it_is_back(receiver, client):
    assert client.send(record()).status == "accepted"  # a pooled keep-alive connection exists now
    receiver.stop()
    down = client.send(record())
    assert down.status == "retryable" and down.http_status is None
    receiver.start()
    assert client.send(record()).status == "accepted"


def test_the_admin_endpoint_switches_faults_and_needs_the_credential(receiver, client, tls):
    with ReceiverAdmin(receiver.url, tls.ca_cert, SERVER_NAME, "bearer", TOKEN) as admin:
        admin.set_faults(ReceiverFaults(rate_limit=True, retry_after="3"))
        assert receiver.faults.rate_limit
        assert client.send(record()).retry_after_s == 3.0
        admin.set_faults(ReceiverFaults())
        assert client.send(record()).status == "accepted"
    with ReceiverAdmin(receiver.url, tls.ca_cert, SERVER_NAME, "bearer", "wrong") as intruder:
        with pytest.raises(Exception, match="401"):
            intruder.set_faults(ReceiverFaults(down=True))
    assert not receiver.faults.down


# -- authentication and TLS --------------------------------------------------


def test_basic_auth_from_a_private_file(tls, tmp_path):
    secret = tmp_path / "kb.basic"
    secret.write_text(BASIC + "\n")
    secret.chmod(0o600)
    with ReceiverServer(ServerTls(tls.server_cert, tls.server_key), auth="basic", credential=BASIC) as server:
        with KillBillClient(kb_target(server, tls, f"file:{secret}", auth_mode="basic")) as kb:
            assert kb.send(record()).status == "accepted"
        secret.write_text("remit-user:wrong-password")
        with KillBillClient(kb_target(server, tls, f"file:{secret}", auth_mode="basic")) as kb:
            refused = kb.send(record())
    assert (refused.status, refused.http_status) == ("refused", 401)
    assert "wrong-password" not in refused.detail and BASIC not in refused.detail


def test_a_wrong_bearer_token_is_refused_and_not_echoed(receiver, tls, monkeypatch):
    monkeypatch.setenv("REMIT_WRONG", "not-the-token-123")
    with KillBillClient(kb_target(receiver, tls, "env:REMIT_WRONG")) as kb:
        outcome = kb.send(record())
    assert (outcome.status, outcome.http_status) == ("refused", 401)
    assert "not-the-token-123" not in outcome.detail and "not-the-token-123" not in repr(kb)


def test_a_target_echoing_the_secret_never_gets_it_into_the_outcome(receiver, client):
    # The receiver's refusal quotes the subscription key; make that the token.
    receiver.faults = ReceiverFaults(refuse_subscriptions={TOKEN})
    outcome = client.send(record(subscription=TOKEN))
    assert outcome.status == "refused"
    assert TOKEN not in outcome.detail and "**********" in outcome.detail


def test_no_credential_reaches_any_log_even_at_debug(receiver, client, caplog):
    caplog.set_level("DEBUG")
    receiver.faults = ReceiverFaults(refuse_subscriptions={"bad"})
    for sent in (record(), record(subscription="bad")):
        client.send(sent)
    receiver.faults = ReceiverFaults(accept_then_drop=True)
    client.send(record())
    assert caplog.records  # the receiver and httpcore did log at debug
    assert TOKEN not in caplog.text


def test_basic_credential_without_a_colon_is_a_clear_local_error(receiver, tls, monkeypatch):
    monkeypatch.setenv("REMIT_BASIC", "justapassword")
    with pytest.raises(DeliveryConfigError, match="user:password") as error:
        KillBillClient(kb_target(receiver, tls, "env:REMIT_BASIC", auth_mode="basic"), name="kb")
    assert "justapassword" not in str(error.value)


@pytest.mark.parametrize("which", ["wrong-ca", "wrong-server-name"])
def test_wrong_ca_or_server_name_is_refused_with_a_clear_error_and_no_secret(receiver, tls, token_env, tmp_path, which):
    if which == "wrong-ca":
        target = kb_target(receiver, tls, token_env, ca_bundle_ref=f"file:{write_unrelated_ca_bundle(tmp_path / 'other.pem')}")
    else:
        target = kb_target(receiver, tls, token_env, server_name="someone-else.test")
    with KillBillClient(target) as kb:
        outcome = kb.send(record())
    assert outcome.status == "refused" and outcome.http_status is None
    assert "TLS certificate verification failed" in outcome.detail
    assert TOKEN not in outcome.detail
    assert receiver.store.request_counts() == {}  # nothing reached the receiver


def test_missing_credential_and_unreadable_ca_raise_before_sending(receiver, tls, monkeypatch, tmp_path):
    monkeypatch.delenv("REMIT_ABSENT", raising=False)
    with pytest.raises(DeliveryConfigError, match="REMIT_ABSENT is not set"):
        KillBillClient(kb_target(receiver, tls, "env:REMIT_ABSENT"), name="kb")
    monkeypatch.setenv("REMIT_PRESENT", TOKEN)
    with pytest.raises(DeliveryConfigError, match="cannot be loaded") as error:
        KillBillClient(kb_target(receiver, tls, "env:REMIT_PRESENT", ca_bundle_ref=f"file:{tmp_path / 'nope.pem'}"), name="kb")
    assert TOKEN not in str(error.value) and "'kb'" in str(error.value)


# -- send_many ----------------------------------------------------------------


def test_send_many_bounds_concurrency_and_streams_its_input(receiver, tls, token_env):
    receiver.faults = ReceiverFaults(delay_s=0.05)
    pulled = 0

    def records():
        nonlocal pulled
        for n in range(48):
            pulled += 1
            yield record(quantity=n, tracking_id=f"many-{n}")

    yielded = 0
    seen: list[str] = []
    with KillBillClient(kb_target(receiver, tls, token_env, max_in_flight=4)) as kb:
        for sent, outcome in kb.send_many(records()):
            yielded += 1
            assert pulled - yielded <= 4 - 1 + 1  # never more than max_in_flight pulled ahead
            assert outcome.status == "accepted"
            seen.append(sent.tracking_id)
    assert sorted(seen) == sorted(f"many-{n}" for n in range(48))
    assert 2 <= receiver.peak_in_flight <= 4  # concurrent, and bounded
    assert receiver.totals() == {("acme-traffic", "uplink_bytes"): sum(range(48))}


def test_send_many_honours_a_smaller_limit_and_a_stop_event(receiver, client):
    receiver.faults = ReceiverFaults(delay_s=0.02)
    stop = threading.Event()
    pulled = 0

    def records():
        nonlocal pulled
        for n in range(1000):
            pulled += 1
            yield record(quantity=1)

    results = []
    for pair in client.send_many(records(), max_in_flight=2, stop=stop):
        results.append(pair)
        if len(results) == 5:
            stop.set()
    assert receiver.peak_in_flight <= 2
    assert 5 <= len(results) <= 7 and pulled == len(results)  # the rest was never pulled: still pending for the caller


def test_send_many_mixes_outcomes_per_record(receiver, client):
    receiver.faults = ReceiverFaults(refuse_subscriptions={"bad"})
    sent = [record(subscription="bad" if n % 3 == 0 else "ok", quantity=n) for n in range(30)]
    outcomes = {r.tracking_id: o.status for r, o in client.send_many(iter(sent))}
    assert outcomes == {r.tracking_id: "refused" if r.subscription_key == "bad" else "accepted" for r in sent}


# -- models -------------------------------------------------------------------


def test_target_models_are_strict():
    adapter = TypeAdapter(Target)
    base = dict(kind="killbill", base_url="https://kb.example:8443/", auth_mode="basic", credential_ref="env:KB", ca_bundle_ref="file:/ca.pem", server_name="kb.example")
    parsed = adapter.validate_python(base)
    assert isinstance(parsed, KillBillTarget) and parsed.base_url == "https://kb.example:8443"
    assert parsed.request_timeout == timedelta(seconds=10) and parsed.max_in_flight == 8
    for bad in (
        dict(base, base_url="http://127.0.0.1:8080"),
        dict(base, base_url="https://user:pw@kb.example"),
        dict(base, auth_mode="mtls"),
        dict(base, credential_ref="KB"),
        dict(base, ca_bundle_ref="/ca.pem"),
        dict(base, server_name="https://kb.example"),
        dict(base, max_in_flight=0),
        dict(base, request_timeout="0s"),
        dict(base, surprise=1),
        dict(kind="csv", directory="relative/dir"),
        dict(kind="ftp"),
    ):
        with pytest.raises(ValidationError):
            adapter.validate_python(bad)
    assert adapter.validate_python(dict(kind="csv", directory="/var/lib/billing/remit")) == CsvTarget(kind="csv", directory=Path("/var/lib/billing/remit"))


def test_usage_record_and_outcome_refuse_what_must_never_leave():
    with pytest.raises(ValueError):
        record(quantity=-1)
    with pytest.raises(ValueError):
        UsageRecord("kb", "a", "s", "uplink_bytes", HOUR.replace(tzinfo=None), 1, "t")
    with pytest.raises(ValueError):
        UsageRecord("kb", "a", "s", "bytes", HOUR, 1, "t")
    with pytest.raises(ValueError):
        UsageRecord("kb", "a", "s", "uplink_bytes", HOUR, 1.0, "t")  # type: ignore[arg-type]
    assert len(Outcome("refused", "x" * 2000).detail) == 500


# -- CSV ----------------------------------------------------------------------


def csv_lines(n: int = 50) -> list[CsvLine]:
    return [
        CsvLine(f"acct-{n % 7}", f'sub,"{n % 7}"', "uplink_bytes" if n % 2 else "downlink_bytes", HOUR, n * 1000, f"trk-{n}", n % 3)
        for n in range(n)
    ]


def test_csv_bytes_are_deterministic_and_round_trip(tmp_path):
    lines = csv_lines()
    forward, line_of = render_batch(lines)
    backward, _ = render_batch(reversed(lines))
    assert forward == backward
    rows = list(csv.reader(io.StringIO(forward.decode())))
    assert rows[0] == HEADER.strip().split(",")
    by_tracking = {row[5]: (number, row) for number, row in enumerate(rows, start=1)}
    for line in lines:
        number, row = by_tracking[line.tracking_id]
        assert line_of[line.tracking_id] == number
        assert row == [line.account_id, line.subscription_key, line.metric, "2026-11-22T10:00:00Z", str(line.quantity), line.tracking_id, str(line.revision)]


def test_csv_write_is_atomic_adopts_identical_and_never_rewrites(tmp_path):
    target = CsvTarget(kind="csv", directory=tmp_path / "remit")
    name = file_name_for(HOUR, 1)
    lines = csv_lines()
    first = write_batch_file(target, name, lines)
    assert not first.adopted and first.line_count == 50
    assert os.listdir(target.directory) == [name]  # no temp file left behind
    inode, content = first.path.stat().st_ino, first.path.read_bytes()
    import hashlib

    assert hashlib.sha256(content).hexdigest() == first.sha256

    # A crash after writing, before the manifest commit: the rerun adopts.
    again = write_batch_file(target, name, list(reversed(lines)))
    assert again.adopted and again.sha256 == first.sha256 and again.line_of == first.line_of
    assert first.path.stat().st_ino == inode and os.listdir(target.directory) == [name]

    with pytest.raises(CsvFileConflict, match="refusing to rewrite"):
        write_batch_file(target, name, lines[:-1])
    assert first.path.read_bytes() == content and first.path.stat().st_ino == inode


def test_a_crashed_writers_temp_file_does_not_block_or_leak_into_the_batch(tmp_path):
    target = CsvTarget(kind="csv", directory=tmp_path)
    name = file_name_for(HOUR, 2)
    stale = tmp_path / f".{name}.999.deadbeef.tmp"
    stale.write_bytes(HEADER.encode() + b"half a li")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    written = write_batch_file(target, name, csv_lines(3))
    assert written.path.read_bytes().count(b"\n") == 4
    assert sorted(os.listdir(tmp_path)) == [name]  # the stale temp file was cleaned


def test_csv_refuses_duplicate_tracking_ids_and_odd_names(tmp_path):
    target = CsvTarget(kind="csv", directory=tmp_path)
    line = csv_lines(1)[0]
    with pytest.raises(ValueError, match="twice"):
        write_batch_file(target, file_name_for(HOUR, 3), [line, line])
    with pytest.raises(ValueError):
        write_batch_file(target, "../escape.csv", [line])
    assert os.listdir(tmp_path) == []


def test_file_names_are_deterministic_and_on_the_hour():
    assert file_name_for(HOUR, 1) == "usage-20261122T1000Z-0001.csv"
    assert file_name_for(HOUR.astimezone(timezone(timedelta(hours=2))), 1) == "usage-20261122T1000Z-0001.csv"
    with pytest.raises(ValueError):
        file_name_for(HOUR + timedelta(minutes=1), 1)
    with pytest.raises(ValueError):
        file_name_for(HOUR.replace(tzinfo=None), 1)


# -- the receiver as a process --------------------------------------------------


def test_billing_receiver_runs_as_a_process_and_its_faults_switch_from_the_cli(tmp_path, monkeypatch, capsys):
    env = dict(os.environ, RECEIVER_CRED=TOKEN)
    process = subprocess.Popen(
        [sys.executable, "-m", "billing_assets.receiver", "--port", "0", "--credential-env", "RECEIVER_CRED", "--generate-certs", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ca_line = process.stdout.readline().strip()
        listen_line = process.stdout.readline().strip()
        assert ca_line == f"ca_cert={tmp_path / 'ca.pem'}", ca_line
        url = listen_line.split(" listening on ")[1].split(" ")[0]
        monkeypatch.setenv("RECEIVER_CRED", TOKEN)
        assert receiver_main(["faults", "--url", url, "--ca-cert", str(tmp_path / "ca.pem"), "--credential-env", "RECEIVER_CRED", '{"fail_5xx": true}']) == 0
        assert json.loads(capsys.readouterr().out)["fail_5xx"] is True
        target = KillBillTarget(
            kind="killbill", base_url=url, auth_mode="bearer", credential_ref="env:RECEIVER_CRED",
            ca_bundle_ref=f"file:{tmp_path / 'ca.pem'}", server_name=SERVER_NAME, request_timeout="5s",
        )
        with KillBillClient(target) as kb:
            assert kb.send(record()).http_status == 503
            receiver_main(["faults", "--url", url, "--ca-cert", str(tmp_path / "ca.pem"), "--credential-env", "RECEIVER_CRED", "{}"])
            assert kb.send(record()).status == "accepted"
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert TOKEN not in stderr and "1 records accepted" in stderr
