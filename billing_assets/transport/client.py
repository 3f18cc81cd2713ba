"""Fetching one source's window, page by page, with retries and identity checks.

Pages are yielded as they arrive (validated) so a long range streams through
memory one page at a time. Transient failures (5xx, 429, timeouts, refused
connections) are retried with exponential backoff; anything that retrying
cannot fix (TLS trust, 401/403, bad JSON, wrong node) fails at once.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import httpx
from pydantic import ValidationError

from billing_assets.core.timeutil import format_rfc3339
from billing_assets.registry.credentials import CredentialError, resolve_bearer_token
from billing_assets.registry.model import Source
from billing_assets.transport.envelope import LatestSnapshot, WindowPage, check_identity, describe_validation
from billing_assets.transport.errors import SourceFetchError
from billing_assets.transport.tls import build_ssl_context, describe_tls_failure

USER_AGENT = "billing-assets/0.1"
MAX_PAGES = 100_000


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def delay(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * (2 ** (attempt - 1)))


@dataclass(frozen=True)
class FetchedPage:
    page_no: int
    page: WindowPage
    body_bytes: int
    cursor: str | None


def _trust(source: Source) -> ssl.SSLContext | bool:
    """The source's pinned, verifying context; there is no way to get a non-verifying one.

    A `plain_http` dev source (loopback only, see the registry) has no TLS at
    all, so it gets httpx's default verifying context, which is never used.
    """
    if source.plain_http:
        return True
    return build_ssl_context(source)


class ExporterClient:
    """An HTTPS client bound to exactly one source and its own credential."""

    def __init__(self, source: Source, retry: RetryPolicy | None = None):
        self.source = source
        self.retry = retry or RetryPolicy()
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if source.auth_mode == "bearer":
            try:
                token = resolve_bearer_token(source.credential_ref).reveal()
            except CredentialError as error:
                raise SourceFetchError(source.source_id, str(error)) from None
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=source.base_url.rstrip("/"),
            headers=headers,
            verify=_trust(source),
            timeout=source.request_timeout.total_seconds(),
            follow_redirects=False,
            trust_env=False,
        )

    def __enter__(self) -> "ExporterClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _fail(self, reason: str, retryable: bool = False) -> SourceFetchError:
        return SourceFetchError(self.source.source_id, reason, retryable=retryable)

    def _get(self, path: str, params: dict[str, str]) -> bytes:
        extensions = {"sni_hostname": self.source.server_name}
        for attempt in range(1, self.retry.attempts + 1):
            try:
                response = self._http.get(path, params=params, extensions=extensions)
                error = self._status_error(response)
                if error is None:
                    return response.content
            except httpx.TimeoutException:
                error = self._fail(f"timed out after {self.source.request_timeout.total_seconds():g}s on {path}", True)
            except httpx.TransportError as exc:
                tls = describe_tls_failure(exc)
                if tls is not None:
                    raise self._fail(f"{tls} (server_name {self.source.server_name!r})") from None
                error = self._fail(f"cannot reach exporter ({exc.__class__.__name__})", True)
            if not error.retryable or attempt == self.retry.attempts:
                if error.retryable:
                    raise self._fail(f"{error.reason} (gave up after {attempt} attempts)") from None
                raise error
            time.sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable")

    def _status_error(self, response: httpx.Response) -> SourceFetchError | None:
        code = response.status_code
        if code == 200:
            return None
        if code in (401, 403):
            return self._fail(f"exporter rejected our credentials (HTTP {code})")
        if code == 429 or code >= 500:
            return self._fail(f"exporter answered HTTP {code}", retryable=True)
        return self._fail(f"exporter answered HTTP {code} to {response.request.url.path}")

    def iter_window(self, since: datetime, until: datetime, limit: int | None = None) -> Iterator[FetchedPage]:
        """Every page of [since, until), each checked against the registry."""
        params = {"since": format_rfc3339(since), "until": format_rfc3339(until), "limit": str(limit or self.source.page_limit)}
        cursor: str | None = None
        seen_cursors: set[str] = set()
        for page_no in range(MAX_PAGES):
            query = dict(params, cursor=cursor) if cursor else params
            body = self._get("/v1/snapshots/window", query)
            page = self._parse_page(body, page_no, since, until)
            yield FetchedPage(page_no, page, len(body), cursor)
            if not page.has_more:
                return
            if not page.next_cursor or page.next_cursor in seen_cursors:
                raise self._fail(f"page {page_no}: has_more without a new next_cursor")
            seen_cursors.add(page.next_cursor)
            cursor = page.next_cursor
        raise self._fail(f"more than {MAX_PAGES} pages for one window")

    def _parse_page(self, body: bytes, page_no: int, since: datetime, until: datetime) -> WindowPage:
        where = f"page {page_no}"
        try:
            page = WindowPage.model_validate_json(body)
        except ValidationError as error:
            kind = "malformed JSON" if any(e["type"] == "json_invalid" for e in error.errors()) else "schema violation"
            raise self._fail(f"{where}: {kind}: {describe_validation(error)}") from None
        mismatch = check_identity(self.source.source_id, self.source.node_id, self.source.env, page.node_id, page.env, where)
        if mismatch:
            raise self._fail(mismatch)
        if page.window_start != since or page.window_end != until:
            raise self._fail(f"{where}: envelope window [{page.window_start}, {page.window_end}) is not the requested one")
        for item in page.items:
            if not since <= item.collected_at < until:
                raise self._fail(f"{where}: item collected_at {item.collected_at.isoformat()} is outside the window")
        return page

    def latest(self) -> LatestSnapshot:
        body = self._get("/v1/snapshots/latest", {})
        try:
            snapshot = LatestSnapshot.model_validate_json(body)
        except ValidationError as error:
            raise self._fail(f"latest snapshot: {describe_validation(error)}") from None
        mismatch = check_identity(self.source.source_id, self.source.node_id, self.source.env, snapshot.node_id, snapshot.env, "latest snapshot")
        if mismatch:
            raise self._fail(mismatch)
        return snapshot
