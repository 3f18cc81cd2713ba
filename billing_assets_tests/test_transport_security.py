"""Trusting exporters, proven through real Dagster runs against real TLS
servers on loopback: every way an exporter (or our own configuration) can be
untrustworthy must fail that source's run with a reason naming the source,
write nothing for it, and leave the reason in its checkpoint.

The registry always dials 127.0.0.1 while the certificates name only
``<source>.exporter.test``, so every passing run also proves that
``server_name`` (not the dialled address) is what gets verified.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from billing_assets.exporter import Faults, generate_tls_material, write_unrelated_ca_bundle
from billing_assets.registry.credentials import CredentialError, resolve_bearer_token, resolve_secret
from billing_assets.registry.model import parse_registry
from billing_assets.transport.client import ExporterClient
from billing_assets.transport.errors import SourceFetchError
from billing_assets_tests.support.outcomes import checkpoint, failure_text, nothing_written, rows_written, run_minutes

SID = "sec-1"
OTHER = "sec-2"
# Transport outcomes do not depend on the database: checks that write nothing
# or only need a control run use SQLite (see MATRIX for what runs on PostgreSQL).
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _retarget(env, source_id: str = SID, **changes) -> None:
    """Change a registered entry after partitions were synced, as an operator editing sources.yaml would."""
    env.fleet.exporters[source_id].entry.update(changes)
    env.write_registry()


def _register(env) -> None:
    env.write_registry()
    env.sync_partitions()


def _start(env, billing_start: datetime, source_id: str = SID, **kwargs):
    return env.fleet.start(source_id, billing_start=billing_start, users=3, **kwargs)


# -- the matrix: (arrange, reason fragments) --------------------------------


def wrong_ca(env, billing_start):
    _start(env, billing_start)
    _register(env)
    _retarget(env, ca_bundle_ref="file:" + write_unrelated_ca_bundle(env.root / "unrelated" / "ca.pem"))


def wrong_ca_even_if_the_process_trusts_it(env, billing_start):
    """Ambient trust settings must not widen a source's pinned CA."""
    running = _start(env, billing_start)
    _register(env)
    _retarget(env, ca_bundle_ref="file:" + write_unrelated_ca_bundle(env.root / "unrelated" / "ca.pem"))
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        env.fleet.monkeypatch.setenv(name, running.tls.ca_cert)
    env.fleet.monkeypatch.setenv("PYTHONHTTPSVERIFY", "0")


def wrong_ca_with_uppercase_scheme(env, billing_start):
    """`HTTPS://` is https: the scheme's spelling must not change whether we verify."""
    running = _start(env, billing_start)
    _register(env)
    _retarget(
        env,
        base_url=running.server.url.replace("https://", "HTTPS://"),
        ca_bundle_ref="file:" + write_unrelated_ca_bundle(env.root / "unrelated" / "ca.pem"),
    )


def expired_certificate(env, billing_start):
    now = datetime.now(timezone.utc)
    tls = generate_tls_material(
        env.root / "tls-expired", server_names=(f"{SID}.exporter.test",),
        not_before=now - timedelta(days=30), not_after=now - timedelta(days=1),
    )
    _start(env, billing_start, tls=tls)
    _register(env)


def not_yet_valid_certificate(env, billing_start):
    now = datetime.now(timezone.utc)
    tls = generate_tls_material(
        env.root / "tls-future", server_names=(f"{SID}.exporter.test",),
        not_before=now + timedelta(days=1), not_after=now + timedelta(days=30),
    )
    _start(env, billing_start, tls=tls)
    _register(env)


def server_name_mismatch(env, billing_start):
    _start(env, billing_start)
    _register(env)
    _retarget(env, server_name=f"{OTHER}.exporter.test")


def mtls_without_client_certificate(env, billing_start):
    """The exporter requires mTLS; the registry (wrongly) says bearer, so no certificate is presented."""
    _start(env, billing_start, auth="mtls")
    _register(env)
    env.fleet.monkeypatch.setenv("BILLING_TEST_UNUSED_TOKEN", "unused-token-value")
    _retarget(env, auth_mode="bearer", credential_ref="env:BILLING_TEST_UNUSED_TOKEN")


def mtls_client_certificate_from_another_ca(env, billing_start):
    _start(env, billing_start, auth="mtls")
    _register(env)
    foreign = generate_tls_material(env.root / "tls-foreign", server_names=("foreign.exporter.test",))
    _retarget(env, credential_ref=f"file:{foreign.client_cert_key}")


def mtls_client_key_file_missing(env, billing_start):
    _start(env, billing_start, auth="mtls")
    _register(env)
    _retarget(env, credential_ref=f"file:{env.root / 'absent' / 'client.pem'}")


def bearer_wrong_token(env, billing_start):
    running = _start(env, billing_start)
    _register(env)
    env.fleet.monkeypatch.setenv(running.entry["credential_ref"][4:], "not-the-token-" + "x" * 12)


def bearer_token_missing(env, billing_start):
    running = _start(env, billing_start)
    _register(env)
    env.fleet.monkeypatch.delenv(running.entry["credential_ref"][4:])


def another_sources_token(env, billing_start):
    """B's entry points at A's token: B's exporter must refuse it (and A's token is then exposed only to B's
    exporter because the operator configured it so; see test_credentials_are_scoped_per_source)."""
    first = _start(env, billing_start, source_id=OTHER)
    _start(env, billing_start)
    _register(env)
    _retarget(env, credential_ref=first.entry["credential_ref"])


def plain_http_without_dev_flag(env, billing_start):
    running = _start(env, billing_start)
    _register(env)
    _retarget(env, base_url=running.server.url.replace("https://", "http://"))


def plain_http_off_loopback_even_with_dev_flag(env, billing_start):
    _start(env, billing_start)
    _register(env)
    _retarget(env, base_url="http://192.0.2.10:8443", dev_allow_plain_http=True)


def node_id_mismatch(env, billing_start):
    _start(env, billing_start, faults=Faults(wrong_node_id="node-elsewhere"))
    _register(env)


def env_mismatch(env, billing_start):
    _start(env, billing_start, faults=Faults(wrong_env="prod"))
    _register(env)


def node_id_mismatch_on_a_later_page(env, billing_start):
    """Page 0 is fine and gets staged; page 1 claims another node: the whole slice must roll back."""
    _start(env, billing_start, faults=Faults(wrong_node_id_on_page=1), page_limit=2)
    _register(env)


@dataclass(frozen=True)
class Case:
    arrange: Callable
    reason: tuple[str, ...]

    @property
    def id(self) -> str:
        return self.arrange.__name__


CASES = [
    Case(wrong_ca, ("TLS certificate verification failed", "unable to get local issuer certificate")),
    Case(wrong_ca_even_if_the_process_trusts_it, ("TLS certificate verification failed", "unable to get local issuer")),
    Case(wrong_ca_with_uppercase_scheme, ("TLS certificate verification failed", "unable to get local issuer")),
    Case(expired_certificate, ("TLS certificate verification failed", "certificate has expired")),
    Case(not_yet_valid_certificate, ("TLS certificate verification failed", "certificate is not yet valid")),
    Case(server_name_mismatch, ("TLS certificate verification failed", "Hostname mismatch", f"{OTHER}.exporter.test")),
    Case(mtls_without_client_certificate, ("requires a client certificate (mTLS) and none was presented",)),
    Case(mtls_client_certificate_from_another_ca, ("does not trust our client certificate (unknown CA)",)),
    Case(mtls_client_key_file_missing, ("client certificate/key file", "cannot be read")),
    Case(bearer_wrong_token, ("rejected our credentials (HTTP 403)",)),
    Case(bearer_token_missing, ("bearer token environment variable BILLING_TEST_TOKEN_SEC_1 is not set",)),
    Case(another_sources_token, ("rejected our credentials (HTTP 403)",)),
    Case(plain_http_without_dev_flag, ("field base_url: must be https://",)),
    Case(plain_http_off_loopback_even_with_dev_flag, ("field base_url: plain http:// is allowed only for loopback",)),
    Case(node_id_mismatch, ("node_id 'node-elsewhere' does not match the registry's 'node-sec-1'",)),
    Case(env_mismatch, ("env 'prod' does not match the registry's 'test'",)),
    Case(node_id_mismatch_on_a_later_page, ("page 1: node_id 'node-sec-1-imposter' does not match",)),
]


# On PostgreSQL too: the cases that fail after staging began (page 1 of a
# window), through the registry path, and one of each transport family.
ON_POSTGRES = {"node_id_mismatch_on_a_later_page", "plain_http_without_dev_flag", "wrong_ca", "bearer_wrong_token"}
MATRIX = [pytest.param("sqlite", case, id=f"sqlite-{case.id}") for case in CASES] + [
    pytest.param("postgres", case, id=f"postgres-{case.id}", marks=pytest.mark.postgres)
    for case in CASES
    if case.id in ON_POSTGRES
]


@pytest.mark.parametrize("database_url, case", MATRIX, indirect=["database_url"])
def test_untrusted_exporter_fails_the_run_and_writes_nothing(billing_env, recent_hour, case):
    case.arrange(billing_env, recent_hour - timedelta(hours=1))
    minute = recent_hour + timedelta(minutes=5)

    result = run_minutes(billing_env, SID, minute, minute + timedelta(minutes=1))

    assert not result.success
    text = failure_text(result)
    assert f"source {SID!r}" in text
    for fragment in case.reason:
        assert fragment in text
    engine = billing_env.engine
    assert nothing_written(engine, SID), rows_written(engine, SID)
    state = checkpoint(engine, SID)
    assert state is not None and state["last_error"].startswith(f"source {SID!r}: ")
    for fragment in case.reason:
        assert fragment in state["last_error"]
    assert state["last_successful_until"] is None


# -- the same arrangements, trusted: the matrix fails for its reason, not the setup


def _token_file(env, running, mode: int) -> str:
    path = env.root / "secrets" / f"{running.source_id}.token"
    path.parent.mkdir(exist_ok=True)
    path.write_text(running.token + "\n")
    path.chmod(mode)
    return f"file:{path}"


def bearer_token_in_private_file(env, billing_start):
    running = _start(env, billing_start)
    _register(env)
    _retarget(env, credential_ref=_token_file(env, running, 0o600))


def mtls_key_in_environment(env, billing_start):
    running = _start(env, billing_start, auth="mtls")
    _register(env)
    with open(running.tls.client_cert_key) as handle:
        env.fleet.monkeypatch.setenv("BILLING_TEST_CLIENT_PEM", handle.read())
    _retarget(env, credential_ref="env:BILLING_TEST_CLIENT_PEM")


def mtls_key_in_private_file(env, billing_start):
    _start(env, billing_start, auth="mtls")
    _register(env)


def uppercase_scheme_with_the_right_ca(env, billing_start):
    running = _start(env, billing_start)
    _register(env)
    _retarget(env, base_url=running.server.url.replace("https://", "HTTPS://"))


def several_pages(env, billing_start):
    _start(env, billing_start, page_limit=2)
    _register(env)


TRUSTED = [bearer_token_in_private_file, mtls_key_in_environment, mtls_key_in_private_file,
           uppercase_scheme_with_the_right_ca, several_pages]


@sqlite_only
@pytest.mark.parametrize("arrange", TRUSTED, ids=[arrange.__name__ for arrange in TRUSTED])
def test_trusted_exporter_is_billed(billing_env, recent_hour, arrange):
    arrange(billing_env, recent_hour - timedelta(hours=1))
    minute = recent_hour + timedelta(minutes=5)

    result = run_minutes(billing_env, SID, minute, minute + timedelta(minutes=1))

    assert result.success, failure_text(result)
    written = rows_written(billing_env.engine, SID)
    assert written["billing_ledger"] > 0 and written["usage_samples"] > 0
    assert checkpoint(billing_env.engine, SID)["last_error"] is None
    if arrange is several_pages:
        assert written["exporter_pages"] > 2


# -- credentials are per source ----------------------------------------------


def _record_authorization(server) -> list[str]:
    """Every Authorization header this real exporter receives (wraps its dispatch)."""
    seen: list[str] = []
    dispatch = server.dispatch

    def recording(path, query, authorization):
        seen.append(authorization or "")
        return dispatch(path, query, authorization)

    server.dispatch = recording
    return seen


def test_credentials_are_scoped_per_source(billing_env, recent_hour):
    start = recent_hour - timedelta(hours=1)
    first, second = _start(billing_env, start, source_id=OTHER), _start(billing_env, start)
    _register(billing_env)
    heard = {OTHER: _record_authorization(first.server), SID: _record_authorization(second.server)}
    minute = recent_hour + timedelta(minutes=5)

    assert run_minutes(billing_env, OTHER, minute, minute + timedelta(minutes=1)).success
    assert run_minutes(billing_env, SID, minute, minute + timedelta(minutes=1)).success
    assert heard[OTHER] and set(heard[OTHER]) == {f"Bearer {first.token}"}
    assert heard[SID] and set(heard[SID]) == {f"Bearer {second.token}"}

    # An operator pastes the other source's variable into this entry: the exporter refuses it.
    engine = billing_env.engine
    before = rows_written(engine, SID)
    _retarget(billing_env, credential_ref=first.entry["credential_ref"])
    later = minute + timedelta(minutes=1)
    result = run_minutes(billing_env, SID, later, later + timedelta(minutes=1))
    assert not result.success
    assert "rejected our credentials (HTTP 403)" in failure_text(result)
    assert rows_written(engine, SID) == before, "a refused fetch must not add anything"
    assert "HTTP 403" in checkpoint(engine, SID)["last_error"]


def test_missing_credential_fails_only_its_own_source(billing_env, recent_hour):
    start = recent_hour - timedelta(hours=1)
    healthy, broken = _start(billing_env, start, source_id=OTHER), _start(billing_env, start)
    _register(billing_env)
    billing_env.fleet.monkeypatch.delenv(broken.entry["credential_ref"][4:])
    minute = recent_hour + timedelta(minutes=5)

    failed = run_minutes(billing_env, SID, minute, minute + timedelta(minutes=1))
    succeeded = run_minutes(billing_env, OTHER, minute, minute + timedelta(minutes=1))

    assert not failed.success and "is not set" in failure_text(failed)
    assert succeeded.success, failure_text(succeeded)
    engine = billing_env.engine
    assert nothing_written(engine, SID)
    assert rows_written(engine, OTHER)["billing_ledger"] > 0
    assert checkpoint(engine, OTHER)["last_error"] is None
    assert "is not set" in checkpoint(engine, SID)["last_error"]
    assert healthy.token not in checkpoint(engine, SID)["last_error"]


# -- key and token files -------------------------------------------------------


@sqlite_only
@pytest.mark.parametrize("auth", ["mtls", "bearer"])
def test_world_readable_secret_file_is_refused(billing_env, recent_hour, auth):
    running = _start(billing_env, recent_hour - timedelta(hours=1), auth=auth)
    _register(billing_env)
    if auth == "mtls":
        os.chmod(running.tls.client_cert_key, 0o644)
        path = running.tls.client_cert_key
    else:
        ref = _token_file(billing_env, running, 0o644)
        _retarget(billing_env, credential_ref=ref)
        path = ref[5:]
    minute = recent_hour + timedelta(minutes=5)

    result = run_minutes(billing_env, SID, minute, minute + timedelta(minutes=1))

    assert not result.success
    text = failure_text(result)
    assert f"source {SID!r}" in text and f"file {path} is world-readable; chmod 600 it" in text
    assert nothing_written(billing_env.engine, SID)
    assert "world-readable" in checkpoint(billing_env.engine, SID)["last_error"]


def test_secret_resolution_rules(tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("file-token-value\n")
    token_file.chmod(0o600)
    assert resolve_secret(f"file:{token_file}").get_secret_value() == "file-token-value"
    token_file.chmod(0o604)
    with pytest.raises(CredentialError, match="world-readable") as refused:
        resolve_secret(f"file:{token_file}")
    assert "file-token-value" not in str(refused.value)
    token_file.chmod(0o600)
    token_file.write_text("  \n")
    with pytest.raises(CredentialError, match="is empty"):
        resolve_secret(f"file:{token_file}")
    monkeypatch.setenv("BILLING_TEST_ENV_TOKEN", "env-token-value")
    assert resolve_secret("env:BILLING_TEST_ENV_TOKEN").get_secret_value() == "env-token-value"
    assert "env-token-value" not in repr(resolve_secret("env:BILLING_TEST_ENV_TOKEN"))
    assert "env-token-value" not in f"{resolve_secret('env:BILLING_TEST_ENV_TOKEN')}"
    monkeypatch.setenv("BILLING_TEST_ENV_TOKEN", "line-one\nline-two")
    with pytest.raises(CredentialError, match="not allowed in a token") as unsendable:
        resolve_bearer_token("env:BILLING_TEST_ENV_TOKEN")
    assert "line-one" not in str(unsendable.value)


@sqlite_only
def test_client_builds_no_connection_for_an_unusable_credential(billing_env, recent_hour, monkeypatch):
    """A token that cannot be a header fails at once, by name, before any byte is sent."""
    running = _start(billing_env, recent_hour - timedelta(hours=1))
    heard = _record_authorization(running.server)
    monkeypatch.setenv(running.entry["credential_ref"][4:], "tok\u00e9n-with-accent")
    source = parse_registry({"sources": [running.entry]}).get(SID)
    with pytest.raises(SourceFetchError, match="not allowed in a token") as failed:
        ExporterClient(source)
    assert "tok\u00e9n" not in str(failed.value) and heard == []


# -- the local-development path ----------------------------------------------


class _PlainHandler(BaseHTTPRequestHandler):
    """The reference exporter's API without TLS, for a dev_allow_plain_http source."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        url = urlsplit(self.path)
        reply = self.server.app.dispatch(url.path, url.query, self.headers.get("Authorization"))
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, *args) -> None:
        pass


@sqlite_only
def test_plain_http_on_loopback_with_the_dev_flag_is_billed(billing_env, recent_hour):
    running = _start(billing_env, recent_hour - timedelta(hours=1))
    _register(billing_env)
    plain = ThreadingHTTPServer(("127.0.0.1", 0), _PlainHandler)
    plain.app = running.server
    thread = threading.Thread(target=plain.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{plain.server_address[1]}"
        _retarget(billing_env, base_url=url, dev_allow_plain_http=True, ca_bundle_ref="file:/nonexistent/ca.pem")
        minute = recent_hour + timedelta(minutes=5)
        result = run_minutes(billing_env, SID, minute, minute + timedelta(minutes=1))
    finally:
        plain.shutdown()
        plain.server_close()
    assert result.success, failure_text(result)
    assert rows_written(billing_env.engine, SID)["billing_ledger"] > 0
