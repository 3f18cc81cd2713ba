"""Fetching one source's window, page by page, with retries and identity checks.

Pages are yielded as they arrive (validated) so a long range streams through
memory one page at a time. Transient failures (5xx, 429, timeouts, refused
connections) are retried with exponential backoff, or after the exporter's
`Retry-After`; anything that retrying cannot fix (TLS trust, 401/403, bad
JSON, wrong node, an oversized or undecodable body) fails at once.

Nothing an exporter sends may cost more than the registry allows: each
request has a total deadline (`request_timeout`, body included), each
decoded page at most `max_page_bytes`, each window a bounded number of pages
with bounded cursors. Every failure is a `SourceFetchError` naming the
source, so it is recorded against it and never surfaces as a traceback.
"""

from __future__ import annotations

import hashlib
import math
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

import httpx
from pydantic import ValidationError

from billing_assets.core.timeutil import format_rfc3339
from billing_assets.registry.credentials import CredentialError, resolve_bearer_token
from billing_assets.registry.model import Source
from billing_assets.transport.envelope import LatestSnapshot, WindowPage, check_identity, describe_validation
from billing_assets.transport.deadline import Deadline, deadline_transport
from billing_assets.transport.errors import SourceFetchError
from billing_assets.transport.tls import build_ssl_context, describe_tls_failure

USER_AGENT = "billing-assets/0.1"
WINDOW_PATH = "/v1/snapshots/window"
# Page bound per window (see `max_pages`).
PAGE_FLOOR = 1000
MIN_ITEM_SPACING_S = 1.0
SHORT_PAGE_SLACK = 4


@dataclass(frozen=True)
class RetryPolicy:
    """How long one request may keep trying.

    `max_retry_after_s` caps how long an exporter's `Retry-After` may make us
    wait; asking for longer gives up at once (the next collect run comes
    anyway), rather than retrying early against its wish. `max_total_wait_s`
    bounds the sleeping across all retries of a request, so a step's time
    stays bounded by attempts x request_timeout + this.
    """

    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 60.0
    max_total_wait_s: float = 120.0

    def delay(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * (2 ** (attempt - 1)))

    def pause(self, attempt: int, retry_after: float | None, waited: float) -> float | None:
        """Seconds to sleep before attempt + 1, or None to give up now."""
        if attempt >= self.attempts or (retry_after is not None and retry_after > self.max_retry_after_s):
            return None
        pause = self.delay(attempt) if retry_after is None else max(retry_after, self.delay(attempt))
        pause = min(pause, self.max_retry_after_s)
        return None if waited + pause > self.max_total_wait_s else pause


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds an exporter asked us to wait (RFC 9110: delta-seconds or an HTTP-date), None if unusable."""
    value = (value or "").strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return min(float(value), 1e9)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - now).total_seconds())


def max_pages(window: timedelta, limit: int) -> int:
    """The most pages an honest exporter can need for one window.

    An exporter collects at most one snapshot (item) per MIN_ITEM_SPACING_S,
    so a window holds at most window / spacing + 1 items, which full pages
    of `limit` serve in ceil(items / limit) pages. SHORT_PAGE_SLACK allows
    for exporters cutting pages shorter than `limit` or re-sending items
    across page boundaries; PAGE_FLOOR keeps short windows and re-deliveries
    (several items at one instant) clear of the bound. Beyond it the
    exporter is looping or stalling us with fresh cursors, and each page is
    a request we pay for.
    """
    items = math.ceil(window.total_seconds() / MIN_ITEM_SPACING_S) + 1
    return max(PAGE_FLOOR, SHORT_PAGE_SLACK * math.ceil(items / limit))


@dataclass(frozen=True)
class _Retry:
    """A failed attempt worth repeating, with the wait the exporter asked for."""

    error: SourceFetchError
    retry_after: float | None = None


@dataclass(frozen=True)
class FetchedPage:
    page_no: int
    page: WindowPage
    body_bytes: int
    cursor: str | None
    body: bytes | bytearray = b""
    """The decoded body exactly as received (at most `max_page_bytes`): what the fetch step spools."""


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
                token = resolve_bearer_token(source.credential_ref).get_secret_value()
            except CredentialError as error:
                raise SourceFetchError(source.source_id, str(error)) from None
            headers["Authorization"] = f"Bearer {token}"
        self._budget_s = source.request_timeout.total_seconds()
        self._deadline = Deadline()
        self._http = httpx.Client(
            base_url=source.base_url.rstrip("/"),
            headers=headers,
            transport=deadline_transport(_trust(source), self._deadline),
            timeout=self._budget_s,
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

    def _get(self, path: str, params: dict[str, str], where: str = "response") -> bytearray:
        waited = 0.0
        for attempt in range(1, self.retry.attempts + 1):
            outcome = self._attempt(path, params, where)
            if not isinstance(outcome, _Retry):
                return outcome
            pause = self.retry.pause(attempt, outcome.retry_after, waited)
            if pause is None:
                raise self._give_up(outcome, attempt) from None
            time.sleep(pause)
            waited += pause
        raise AssertionError("unreachable")

    def _give_up(self, last: _Retry, attempts: int) -> SourceFetchError:
        detail = f"gave up after {attempts} attempt{'s' if attempts != 1 else ''}"
        if last.retry_after is not None:
            cap = self.retry.max_retry_after_s
            over = f" exceeds the {cap:g}s cap" if last.retry_after > cap else ""
            detail += f"; last Retry-After {last.retry_after:g}s{over}"
        return self._fail(f"{last.error.reason} ({detail})")

    def _attempt(self, path: str, params: dict[str, str], where: str) -> bytearray | _Retry:
        """One request within the total deadline: the decoded body, a retryable failure, or a raise."""
        extensions = {"sni_hostname": self.source.server_name}
        try:
            with self._deadline.running(self._budget_s):
                with self._http.stream("GET", path, params=params, extensions=extensions) as response:
                    refused = self._check_status(response)
                    if refused is not None:
                        return refused
                    return self._read_body(response, where)
        except httpx.TimeoutException:
            reason = f"timed out after {self._budget_s:g}s on {path}: total deadline (request_timeout, body included) exceeded"
            return _Retry(self._fail(reason, True))
        except httpx.DecodingError as exc:
            raise self._fail(f"{where}: response body cannot be decoded (corrupt Content-Encoding: {exc})") from None
        except httpx.TransportError as exc:
            tls = describe_tls_failure(exc)
            if tls is not None:
                raise self._fail(f"{tls} (server_name {self.source.server_name!r})") from None
            # The address is safe to name: the registry refuses a base_url with userinfo.
            return _Retry(self._fail(f"cannot reach exporter at {self.source.base_url} ({exc.__class__.__name__})", True))
        except (httpx.HTTPError, httpx.StreamError, httpx.InvalidURL) as exc:
            raise self._fail(f"{where}: unexpected HTTP client error on {path} ({exc.__class__.__name__})") from None

    def _read_body(self, response: httpx.Response, where: str) -> bytearray:
        """The decoded body, refused as soon as it passes max_page_bytes, so memory is bounded by the cap.

        gzip is decoded per received chunk, so the transient overshoot is one
        decoded TLS record (at most ~1,000 x 16 KiB), never the whole body.
        """
        cap = self.source.max_page_bytes
        declared = response.headers.get("content-length", "")
        if "content-encoding" not in response.headers and declared.isdigit() and int(declared) > cap:
            raise self._too_big(where, int(declared), "declared by Content-Length")
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > cap:
                raise self._too_big(where, len(body), "decoded")
        return body

    def _too_big(self, where: str, size: int, how: str) -> SourceFetchError:
        limit = self.source.max_page_bytes
        return self._fail(f"{where}: response body exceeds max_page_bytes ({size:,} bytes {how}; limit {limit:,})")

    def _check_status(self, response: httpx.Response) -> _Retry | None:
        """None for 200, a retry for what waiting can fix (with the exporter's Retry-After), else a raise."""
        code = response.status_code
        if code == 200:
            return None
        if code in (401, 403):
            raise self._fail(f"exporter rejected our credentials (HTTP {code})")
        if code == 429 or code >= 500:
            asked = response.headers.get("retry-after") if code in (429, 503) else None
            retry_after = parse_retry_after(asked, datetime.now(timezone.utc))
            return _Retry(self._fail(f"exporter answered HTTP {code}", retryable=True), retry_after)
        raise self._fail(f"exporter answered HTTP {code} to {response.request.url.path}")

    def iter_window(self, since: datetime, until: datetime, limit: int | None = None) -> Iterator[FetchedPage]:
        """Every page of [since, until), each checked against the registry."""
        limit = limit or self.source.page_limit
        params = {"since": format_rfc3339(since), "until": format_rfc3339(until), "limit": str(limit)}
        bound = max_pages(until - since, limit)
        cursor: str | None = None
        seen: set[bytes] = set()
        for page_no in range(bound):
            query = dict(params, cursor=cursor) if cursor else params
            body = self._get(WINDOW_PATH, query, f"page {page_no}")
            page = self._parse_page(body, page_no, since, until)
            yield FetchedPage(page_no, page, len(body), cursor, body)
            del body
            if not page.has_more:
                return
            cursor = self._next_cursor(page, page_no, seen)
        raise self._fail(
            f"more than {bound} pages for the window [{format_rfc3339(since)}, {format_rfc3339(until)}) "
            f"(bound: max({PAGE_FLOOR}, {SHORT_PAGE_SLACK} x pages of {limit} items at one item per {MIN_ITEM_SPACING_S:g}s))"
        )

    def _next_cursor(self, page: WindowPage, page_no: int, seen: set[bytes]) -> str:
        """The cursor to follow, refused if it repeats; only a 16-byte digest of each is kept."""
        if not page.next_cursor:
            raise self._fail(f"page {page_no}: has_more without a new next_cursor")
        digest = hashlib.blake2b(page.next_cursor.encode(), digest_size=16).digest()
        if digest in seen:
            raise self._fail(f"page {page_no}: has_more without a new next_cursor")
        seen.add(digest)
        return page.next_cursor

    def _parse_page(self, body: bytearray, page_no: int, since: datetime, until: datetime) -> WindowPage:
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
        body = self._get("/v1/snapshots/latest", {}, "latest snapshot")
        try:
            snapshot = LatestSnapshot.model_validate_json(body)
        except ValidationError as error:
            raise self._fail(f"latest snapshot: {describe_validation(error)}") from None
        mismatch = check_identity(self.source.source_id, self.source.node_id, self.source.env, snapshot.node_id, snapshot.env, "latest snapshot")
        if mismatch:
            raise self._fail(mismatch)
        return snapshot
