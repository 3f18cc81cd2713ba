"""`billing sources sync --check` and `billing sources probe`: is each source usable?

`--check` proves what can be proven without contacting an exporter: the
registry validates, each pinned CA bundle loads, each credential reference
resolves (an unset `env:` token, a missing or world-readable key file). A
registry that passes it can still fail on the network, which is what
`probe` is for: one TLS handshake and one authenticated request per source,
each reported on its own line. Neither prints a secret.
"""

from __future__ import annotations

from datetime import timedelta

from billing_assets.core.timeutil import floor_minute, now_utc
from billing_assets.registry.credentials import CredentialError, resolve_bearer_token
from billing_assets.registry.model import Registry
from billing_assets.transport.client import ExporterClient, RetryPolicy
from billing_assets.transport.errors import SourceFetchError
from billing_assets.transport.tls import build_ssl_context


def offline_problems(registry: Registry) -> list[str]:
    """One line per source whose CA or credential cannot be loaded here (enabled or not)."""
    problems = []
    for source in registry.sources:
        try:
            if not source.plain_http:
                build_ssl_context(source)  # loads the pinned CA, and the client cert/key for mtls
            if source.auth_mode == "bearer":
                resolve_bearer_token(source.credential_ref)
        except SourceFetchError as error:
            problems.append(str(error))
        except CredentialError as error:
            problems.append(f"source {source.source_id!r}: {error}")
    return problems


def probe(registry: Registry) -> list[tuple[str, bool, str]]:
    """(source, ok, what happened) per enabled window/dual source, after one real request each."""
    until = floor_minute(now_utc())
    results = []
    for source in registry.enabled:
        if source.mode == "legacy_latest":
            action = "GET /v1/snapshots/latest"
        else:
            action = "GET /v1/snapshots/window (last minute, 1 item)"
        try:
            with ExporterClient(source, RetryPolicy(attempts=1)) as client:
                if source.mode == "legacy_latest":
                    snapshot = client.latest()
                    detail = f"ok: {action}: {len(snapshot.samples)} samples"
                else:
                    page = next(client.iter_window(until - timedelta(minutes=1), until, limit=1))
                    detail = f"ok: {action}: node {page.page.node_id!r}, env {page.page.env!r}"
            results.append((source.source_id, True, detail))
        except SourceFetchError as error:
            results.append((source.source_id, False, error.reason))
    return results
