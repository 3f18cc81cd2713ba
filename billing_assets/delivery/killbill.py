"""Pushing usage records into Kill Bill (`POST /1.0/kb/usages`), one record per request.

The client turns every target behaviour into an `Outcome` instead of an
exception, because the caller is a status machine that must record each
attempt: an exception would lose which record got which answer. Only local
misconfiguration (missing credential, unreadable CA) raises, at construction,
before anything is sent.

Why a pooled connection and threads: one TLS handshake costs more than the
request itself, so connections are kept alive (HTTP/1.1) and shared; Kill
Bill takes one record per request, so throughput comes from a bounded number
of requests in flight (`max_in_flight`), not from batching.

Why httpcore (httpx's own connection pool) rather than `httpx.Client`: the
Client's layers (cookies, auth flows, redirects, URL merging) cost as much
CPU per request as the HTTP exchange itself (measured ~370 vs ~220 µs), which
caps a GIL-bound sender, and we want none of them (a redirect must never be
followed with our credential); and only the pool takes a network backend,
which is how `request_timeout` becomes a deadline for the whole exchange
(`deadline.py`). TLS is the same pinned context and SNI override as sources.

Ambiguity is retryable: a timeout or a connection dropped after the request
went out may or may not have been recorded by the target, and resending the
same `trackingId` is safe because the target dedups on it (a 409 for a known
tracking id counts as accepted).
"""

from __future__ import annotations

import base64
import json
import queue
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import httpcore

from billing_assets.delivery.deadline import DeadlineBackend, deadline_in
from billing_assets.delivery.outcome import DETAIL_LIMIT, Outcome, UsageRecord
from billing_assets.delivery.targets import KillBillTarget
from billing_assets.registry.credentials import CredentialError, resolve_bearer_token, resolve_secret
from billing_assets.transport.tls import PinnedCaError, describe_tls_failure, pinned_client_context

USAGES_PATH = "/1.0/kb/usages"
USER_AGENT = "billing-assets/0.1 (remittance)"
# Retry-After beyond this is treated as this: a target asking for a day's
# pause should not park a row further than the backoff ceiling would.
MAX_RETRY_AFTER_S = 3600.0


class DeliveryConfigError(RuntimeError):
    """Our side cannot talk to the target at all; the message never holds a secret."""


def usage_payload(record: UsageRecord) -> dict:
    hour = record.hour_utc.replace(microsecond=0)
    return {
        "subscriptionExternalKey": record.subscription_key,
        "trackingId": record.tracking_id,
        "unitUsageRecords": [
            {
                "unitType": record.metric,
                "usageRecords": [{"recordDate": hour.strftime("%Y-%m-%dT%H:%M:%SZ"), "amount": record.quantity}],
            }
        ],
    }


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _authorization(target: KillBillTarget, name: str) -> tuple[str, tuple[str, ...]]:
    """The Authorization header and the secret's forms (kept only to scrub echoes)."""
    try:
        if target.auth_mode == "bearer":
            token = resolve_bearer_token(target.credential_ref).get_secret_value()
            return f"Bearer {token}", (token,)
        secret = resolve_secret(target.credential_ref, "basic credential").get_secret_value()
    except CredentialError as error:
        raise DeliveryConfigError(f"target {name!r}: {error}") from None
    user, sep, password = secret.partition(":")
    if not sep or not user or not password:
        raise DeliveryConfigError(
            f"target {name!r}: basic credential in {target.credential_ref.split(':')[0]} reference must be 'user:password'"
        )
    encoded = base64.b64encode(secret.encode("utf-8")).decode("ascii")
    return f"Basic {encoded}", (encoded, secret, password)


class KillBillClient:
    """One target, one connection pool, one credential; safe to share between threads."""

    def __init__(self, target: KillBillTarget, name: str = "killbill") -> None:
        self.target = target
        self.name = name
        header, self._secrets = _authorization(target, name)
        try:
            context = pinned_client_context(target.ca_bundle_path)
        except PinnedCaError as error:
            raise DeliveryConfigError(f"target {name!r}: {error}") from None
        self._timeout_s = target.request_timeout.total_seconds()
        pool = target.max_in_flight
        self._pool = httpcore.ConnectionPool(
            ssl_context=context,
            max_connections=pool,
            max_keepalive_connections=pool,
            keepalive_expiry=30.0,
            network_backend=DeadlineBackend(),
            # h11 writes headers and body separately; without NODELAY the body
            # may wait for the ACK of the headers (Nagle vs delayed ACK).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        self._url = httpcore.URL(target.base_url + USAGES_PATH)
        netloc = self._url.host + (b":%d" % self._url.port if self._url.port else b"")
        self._headers = [
            (b"Host", netloc),
            (b"User-Agent", USER_AGENT.encode()),
            (b"Accept", b"application/json"),
            (b"Content-Type", b"application/json"),
            (b"Authorization", header.encode("ascii")),
            (b"X-Killbill-CreatedBy", b"billing-assets"),
        ]
        self._extensions = {
            "sni_hostname": target.server_name,
            "timeout": dict.fromkeys(("connect", "read", "write", "pool"), self._timeout_s),
        }

    def __repr__(self) -> str:
        return f"KillBillClient(name={self.name!r}, base_url={self.target.base_url!r}, auth_mode={self.target.auth_mode!r})"

    def __enter__(self) -> KillBillClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.close()

    # -- one record -----------------------------------------------------------

    def send(self, record: UsageRecord) -> Outcome:
        """The target's answer to one record; never raises for anything the target does.

        `request_timeout` is the deadline for the whole exchange (waiting for
        a pooled connection, connecting, sending, the complete answer).
        """
        body = json.dumps(usage_payload(record), separators=(",", ":")).encode()
        headers = [*self._headers, (b"Content-Length", b"%d" % len(body))]
        request = httpcore.Request(b"POST", self._url, headers=headers, content=body, extensions=self._extensions)
        try:
            with deadline_in(self._timeout_s):
                response = self._pool.handle_request(request)
                try:
                    answer = self._read_some(response)
                finally:
                    response.close()
        except httpcore.TimeoutException as exc:
            return Outcome("retryable", f"timed out: no complete answer within {self._timeout_s:g}s ({_phase(exc)}); the target may have taken it")
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
            tls = describe_tls_failure(exc)
            if tls is not None:
                # Retrying cannot fix trust: wrong CA, wrong server_name or a
                # certificate from someone else. Refused, so it is seen.
                return Outcome("refused", self._scrub(f"{tls} (server_name {self.target.server_name!r})"))
            return Outcome("retryable", self._scrub(_describe_transport(exc)))
        return self._classify(response, answer)

    @staticmethod
    def _read_some(response: httpcore.Response) -> bytes:
        """The whole body is read (so the connection can be reused), only its start kept."""
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_stream():
            if size < 4 * DETAIL_LIMIT:
                chunks.append(chunk)
                size += len(chunk)
        return b"".join(chunks)

    def _classify(self, response: httpcore.Response, answer: bytes) -> Outcome:
        code = response.status
        detail = self._scrub(f"HTTP {code}" + (f": {_text(answer)}" if answer.strip() else ""))
        if 200 <= code < 300:
            return Outcome("accepted", detail, code)
        if code == 409:
            # The tracking id is already recorded: our earlier attempt landed.
            return Outcome("accepted", detail, code)
        if code == 429 or code >= 500 or code == 408:
            return Outcome("retryable", detail, code, parse_retry_after(_header(response, b"retry-after")))
        return Outcome("refused", detail, code)

    def _scrub(self, text: str) -> str:
        """Belt and braces: a target (or proxy) that echoes our headers must not
        put the credential into the database via Outcome.detail."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "**********")
        return text

    # -- many records ---------------------------------------------------------

    def send_many(
        self,
        records: Iterable[UsageRecord],
        max_in_flight: int | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[tuple[UsageRecord, Outcome]]:
        """(record, outcome) pairs in completion order, at most `max_in_flight` requests at once.

        Records are pulled from the iterable only when a slot frees, so a
        caller streaming rows from the database never holds more than
        `max_in_flight` of them here. Setting `stop` ends the intake: records
        not yet pulled are left untouched (still pending for the caller), and
        those already in flight are finished and yielded.
        """
        limit = max(1, min(max_in_flight or self.target.max_in_flight, self.target.max_in_flight))
        source = iter(records)
        todo: queue.SimpleQueue = queue.SimpleQueue()
        done: queue.SimpleQueue = queue.SimpleQueue()

        def work() -> None:
            for record in iter(todo.get, None):
                try:
                    done.put((record, self.send(record), None))
                except BaseException as error:  # a bug, not target behaviour: re-raised in the caller
                    done.put((record, None, error))

        # Persistent workers and a completion queue: futures plus
        # wait(FIRST_COMPLETED) re-register a waiter on every running request
        # per completion, which showed up as CPU per record.
        workers = [threading.Thread(target=work, name=f"remit-{self.name}-{n}", daemon=True) for n in range(limit)]
        for worker in workers:
            worker.start()
        in_flight = 0
        try:
            while True:
                # Records are pulled here, in the caller's thread, and only
                # when a slot is free: a database cursor behind `records`
                # never crosses threads and is read at the sending pace.
                while in_flight < limit and not (stop is not None and stop.is_set()):
                    record = next(source, None)
                    if record is None:
                        break
                    todo.put(record)
                    in_flight += 1
                if in_flight == 0:
                    return
                record, outcome, error = done.get()
                in_flight -= 1
                if error is not None:
                    raise error
                yield record, outcome
        finally:
            # A consumer that stops early still lets started requests finish;
            # their outcomes are lost to it, which is safe because a resend
            # carries the same tracking id.
            for _ in workers:
                todo.put(None)
            for worker in workers:
                worker.join()


def _text(answer: bytes) -> str:
    text = answer.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return " ".join(text.split())
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        return parsed["message"] + (f" ({parsed['className']})" if isinstance(parsed.get("className"), str) else "")
    return json.dumps(parsed, separators=(",", ":"))


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _phase(exc: httpcore.TimeoutException) -> str:
    return {
        httpcore.ConnectTimeout: "connecting",
        httpcore.ReadTimeout: "waiting for the answer",
        httpcore.WriteTimeout: "sending",
        httpcore.PoolTimeout: "waiting for a pooled connection",
    }.get(type(exc), "request")


def _describe_transport(exc: Exception) -> str:
    if isinstance(exc, httpcore.ConnectError):
        return "cannot connect to the target (connection refused or closed during the handshake)"
    if isinstance(exc, httpcore.RemoteProtocolError):
        return "the target closed the connection without a complete answer; it may have taken the record"
    if isinstance(exc, (httpcore.ReadError, httpcore.WriteError)):
        return f"connection to the target broke ({exc.__class__.__name__}); it may have taken the record"
    return f"request failed ({exc.__class__.__name__})"
