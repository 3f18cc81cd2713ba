"""The reference receiver: Kill Bill's record-usage endpoint over HTTPS, with
tracking-id dedup, a query endpoint, and switchable faults.

It reuses the exporter's TLS front (handshake in the worker thread, NODELAY,
connections dropped on stop), so a receiver outage in a test is as real as
an exporter outage. Stdlib only: the tests' downstream has no moving parts
of its own.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from billing_assets.exporter.api import Reply
from billing_assets.exporter.server import ServedOverTls, ServerTls, TlsHttpServer, server_ssl_context
from billing_assets.receiver.faults import ReceiverFaults
from billing_assets.receiver.store import UnitRecord, UsageStore

log = logging.getLogger(__name__)

USAGES_PATH = "/1.0/kb/usages"
ACCEPTED_PATH = "/1.0/kb/usages/accepted"
FAULTS_PATH = "/_faults"
HEALTH_PATH = "/healthz"
MAX_BODY = 1 << 20

DROP = object()  # close the connection without an answer


@dataclass(frozen=True)
class Trickle:
    reply: Reply
    interval_s: float


def _json(status: int, value: object, **headers: str) -> Reply:
    return Reply(status, json.dumps(value, separators=(",", ":")).encode(), dict(headers))


def kb_error(status: int, class_name: str, code: int, message: str, **headers: str) -> Reply:
    """Kill Bill's error body shape, so our client is tested against what it will really parse."""
    body = {"className": class_name, "code": code, "message": message, "causeClassName": None, "causeMessage": None, "stackTrace": []}
    return _json(status, body, **headers)


class BadUsage(ValueError):
    pass


def parse_usage(body: bytes) -> tuple[str, str, tuple[UnitRecord, ...]]:
    try:
        payload = json.loads(body)
    except ValueError:
        raise BadUsage("body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise BadUsage("body must be a JSON object")
    subscription, tracking_id = payload.get("subscriptionExternalKey"), payload.get("trackingId")
    if not isinstance(subscription, str) or not subscription:
        raise BadUsage("subscriptionExternalKey is required")
    if not isinstance(tracking_id, str) or not tracking_id:
        raise BadUsage("trackingId is required")
    groups = payload.get("unitUsageRecords")
    if not isinstance(groups, list) or not groups:
        raise BadUsage("unitUsageRecords must be a non-empty list")
    units: list[UnitRecord] = []
    for group in groups:
        unit_type = group.get("unitType") if isinstance(group, dict) else None
        records = group.get("usageRecords") if isinstance(group, dict) else None
        if not isinstance(unit_type, str) or not unit_type or not isinstance(records, list) or not records:
            raise BadUsage("each unitUsageRecords entry needs unitType and a non-empty usageRecords list")
        for record in records:
            date = record.get("recordDate") if isinstance(record, dict) else None
            amount = record.get("amount") if isinstance(record, dict) else None
            if not isinstance(date, str):
                raise BadUsage("recordDate is required")
            try:
                datetime.fromisoformat(date)
            except ValueError:
                raise BadUsage(f"recordDate {date[:40]!r} is not an ISO 8601 date-time") from None
            if type(amount) is not int or amount < 0:
                raise BadUsage("amount must be an integer >= 0")
            units.append(UnitRecord(unit_type, date, amount))
    return subscription, tracking_id, tuple(units)


def _tracking_id_of(body: bytes) -> str | None:
    try:
        value = json.loads(body).get("trackingId")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "billing-receiver/0.1"
    sys_version = ""
    timeout = 60
    server: TlsHttpServer

    def setup(self) -> None:
        super().setup()
        self.request.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Request line and status only, at debug level: headers (credentials) never reach a log."""
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self._serve("POST")

    def _serve(self, method: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._reply(_json(413 if length > 0 else 400, {"message": "bad Content-Length"}))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        reply = self.server.app.handle(method, url.path, url.query, self.headers.get("Authorization"), body)
        if isinstance(reply, Trickle):
            self._reply(reply.reply, reply.interval_s)
            return
        if reply is DROP:
            self.close_connection = True
            try:
                self.request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._reply(reply)

    def _reply(self, reply: Reply, trickle_s: float = 0.0) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        try:
            if not trickle_s:
                self.end_headers()
                self.wfile.write(reply.body)
                return
            raw = b"".join(self._headers_buffer) + b"\r\n" + reply.body
            self._headers_buffer = []
            for start in range(0, len(raw), 8):
                self.wfile.write(raw[start : start + 8])
                self.wfile.flush()
                time.sleep(trickle_s)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True


class ReceiverServer(ServedOverTls):
    """A running reference receiver. `credential` is the bearer token, or
    "user:password" for basic auth; it also guards `/_faults` and the query
    endpoint, so a demo receiver cannot be reconfigured by anyone else."""

    thread_label = "billing-receiver"
    handler = _Handler

    def __init__(
        self,
        tls: ServerTls,
        auth: Literal["bearer", "basic"] = "bearer",
        credential: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: ReceiverFaults | None = None,
        duplicate_status: Literal[409, 200] = 409,
    ) -> None:
        if auth not in ("bearer", "basic"):
            raise ValueError("auth must be 'bearer' or 'basic'")
        if not credential or (auth == "basic" and ":" not in credential):
            raise ValueError("credential must be a token (bearer) or 'user:password' (basic)")
        if duplicate_status not in (409, 200):
            raise ValueError("duplicate_status must be 409 or 200")
        self.auth = auth
        self._credential = credential.encode("utf-8")
        self.host = host
        self._requested_port = port
        self._tls = tls
        self.duplicate_status = duplicate_status
        self.store = UsageStore()
        self._lock = threading.Lock()
        self._faults = faults or ReceiverFaults()
        self._usage_requests = 0
        self._in_flight = 0
        self.peak_in_flight = 0

    def __repr__(self) -> str:
        return f"ReceiverServer(auth={self.auth!r}, port={self._requested_port})"

    # -- faults and counters -------------------------------------------------

    @property
    def faults(self) -> ReceiverFaults:
        return self._faults

    @faults.setter
    def faults(self, value: ReceiverFaults | None) -> None:
        with self._lock:
            self._faults = value or ReceiverFaults()
            self._usage_requests = 0

    def reset_peak(self) -> None:
        with self._lock:
            self.peak_in_flight = self._in_flight

    def requests_for(self, tracking_id: str) -> int:
        return self.store.requests_for(tracking_id)

    def totals(self) -> dict[tuple[str, str], int]:
        return self.store.totals()

    # -- lifecycle -----------------------------------------------------------

    def _server_context(self) -> ssl.SSLContext:
        return server_ssl_context(self._tls, require_client_cert=False)

    # -- requests ------------------------------------------------------------

    def _authenticate(self, authorization: str | None) -> Reply | None:
        scheme, _, value = (authorization or "").partition(" ")
        expected = "bearer" if self.auth == "bearer" else "basic"
        challenge = {"WWW-Authenticate": f'{expected.capitalize()} realm="killbill"'}
        if scheme.lower() != expected or not value.strip():
            return kb_error(401, "org.killbill.billing.jaxrs.Unauthorized", 401, f"{expected} authentication required", **challenge)
        presented = value.strip().encode("utf-8", "surrogateescape")
        if self.auth == "basic":
            try:
                presented = base64.b64decode(presented, validate=True)
            except (binascii.Error, ValueError):
                presented = b""
        if not hmac.compare_digest(presented, self._credential):
            return kb_error(401, "org.killbill.billing.jaxrs.Unauthorized", 401, "credentials rejected", **challenge)
        return None

    def handle(self, method: str, path: str, query: str, authorization: str | None, body: bytes) -> Reply | object:
        if path == HEALTH_PATH:
            return _json(200, {"status": "ok"})
        routes = {("POST", USAGES_PATH), ("GET", ACCEPTED_PATH), ("GET", FAULTS_PATH), ("POST", FAULTS_PATH)}
        if (method, path) not in routes:
            known = path in {USAGES_PATH, ACCEPTED_PATH, FAULTS_PATH}
            return _json(405 if known else 404, {"message": "method not allowed" if known else "not found"})
        denied = self._authenticate(authorization)
        if denied is not None:
            return denied
        if path == ACCEPTED_PATH:
            return self._accepted(query)
        if path == FAULTS_PATH:
            return self._set_faults(body) if method == "POST" else _json(200, self._faults.to_dict())
        with self._lock:
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        try:
            return self._usage(body)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _usage(self, body: bytes) -> Reply | object:
        tracking_id = _tracking_id_of(body)
        if tracking_id is not None:
            self.store.count_request(tracking_id)
        with self._lock:
            faults = self._faults
            number = self._usage_requests
            self._usage_requests += 1
        if faults.delay_s > 0:
            time.sleep(faults.delay_s)
        if faults.down:
            return DROP
        if faults.fail_5xx or number < faults.fail_first_n:
            return kb_error(faults.status_5xx, "java.lang.IllegalStateException", 0, "usage service unavailable (injected fault)")
        if faults.rate_limit:
            return kb_error(429, "org.killbill.billing.jaxrs.TooManyRequests", 429, "rate limited (injected fault)", **{"Retry-After": faults.retry_after})
        try:
            subscription, tracking_id, units = parse_usage(body)
        except BadUsage as error:
            return kb_error(400, "java.lang.IllegalArgumentException", 0, str(error))
        if subscription in faults.refuse_subscriptions:
            return kb_error(
                faults.refuse_status,
                "org.killbill.billing.subscription.api.user.SubscriptionBaseApiException",
                1011,
                f"Subscription with external key {subscription} does not exist",
            )
        new = self.store.accept(subscription, tracking_id, units)
        if faults.accept_then_drop:
            return DROP
        if new:
            reply = Reply(201, b"", {"Location": f"{USAGES_PATH}/{tracking_id}"})
        elif self.duplicate_status == 200:
            reply = Reply(200, b"")
        else:
            reply = kb_error(409, "org.killbill.billing.usage.api.UsageApiException", 7303, f"tracking id {tracking_id} already recorded")
        return Trickle(reply, faults.trickle_s) if faults.trickle_s > 0 else reply

    def _accepted(self, query: str) -> Reply:
        params = parse_qs(query)
        totals = [
            {"subscription": subscription, "unitType": unit_type, "amount": amount}
            for (subscription, unit_type), amount in sorted(self.store.totals().items())
        ]
        body: dict[str, Any] = {"accepted": self.store.accepted_count(), "totals": totals, "conflicts": self.store.conflicts()}
        if params.get("totals_only", ["false"])[0].lower() not in ("1", "true", "yes"):
            body["records"] = self.store.records()
            body["requests_by_tracking_id"] = self.store.request_counts()
        return _json(200, body)

    def _set_faults(self, body: bytes) -> Reply:
        try:
            faults = ReceiverFaults.from_dict(json.loads(body or b"{}"))
        except (ValueError, TypeError) as error:
            return _json(400, {"message": f"bad faults: {error}"})
        self.faults = faults
        return _json(200, faults.to_dict())
