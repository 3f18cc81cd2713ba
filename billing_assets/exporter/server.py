"""HTTPS front of the reference exporter: TLS, authentication, fault gating.

Stdlib only (``http.server``), so the tests' upstream has no moving parts of
its own. The TLS handshake runs in each connection's worker thread rather
than in ``accept()``, so one slow or misbehaving client (e.g. a mTLS client
without a certificate) cannot stall the accept loop for everyone else.
"""

from __future__ import annotations

import hmac
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from billing_assets.exporter.api import Reply, SnapshotApi, error
from billing_assets.exporter.faults import Faults
from billing_assets.exporter.traffic import TrafficShape

log = logging.getLogger(__name__)

WINDOW_PATH = "/v1/snapshots/window"
LATEST_PATH = "/v1/snapshots/latest"
HEALTH_PATH = "/healthz"


@dataclass(frozen=True)
class ServerTls:
    """What the server needs: its certificate chain and key, plus the CA that
    client certificates must chain to (required for ``auth="mtls"``)."""

    server_cert: str
    server_key: str
    client_ca: str | None = None


def server_ssl_context(tls: Any, require_client_cert: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.server_cert, tls.server_key)
    if require_client_cert:
        client_ca = getattr(tls, "client_ca", None)
        if not client_ca:
            raise ValueError("auth='mtls' needs tls.client_ca (the CA client certificates chain to)")
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=client_ca)
    return context


class TlsHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], context: ssl.SSLContext, app: Any, handler: type[BaseHTTPRequestHandler] | None = None
    ) -> None:
        """``handler`` lets the reference receiver reuse this TLS front with its own routes."""
        self.ssl_context = context
        self.app = app
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler or _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        raw, address = self.socket.accept()
        # Headers and body go out as separate writes; without NODELAY, Nagle
        # plus delayed ACKs add ~40 ms to every keep-alive response.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = self.ssl_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        with self._open_lock:
            self._open.add(tls)
        return tls, address

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Failed handshakes and dropped clients are routine for a test
        upstream; keep them out of stderr."""
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

    def drop_connections(self) -> None:
        """Unblock keep-alive workers so a stopped server really is gone."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "billing-exporter/0.1"
    sys_version = ""
    timeout = 60
    server: TlsHttpServer

    def setup(self) -> None:
        super().setup()
        self.request.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Request line and status only, at debug level: headers (the bearer
        token) never reach a log."""
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        url = urlsplit(self.path)
        reply = self.server.app.dispatch(url.path, url.query, self.headers.get("Authorization"))
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True


def _query(raw: str) -> dict[str, str]:
    parsed = parse_qs(raw, keep_blank_values=True)
    repeated = sorted(name for name, values in parsed.items() if len(values) > 1)
    if repeated:
        raise ValueError(f"repeated parameter: {repeated[0]}")
    return {name: values[0] for name, values in parsed.items()}


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class ServedOverTls:
    """Start, stop and address of a threaded TLS HTTP service (the reference exporter and receiver).

    Subclasses set `host`, `_requested_port` and `_tls` in their constructor
    and say which TLS context and request handler they serve with. The port is
    kept across stop()/start(): an outage test restarts the service at the URL
    its clients are already configured with.
    """

    _httpd: TlsHttpServer | None = None
    _thread: threading.Thread | None = None
    thread_label = "billing-server"
    handler: type[BaseHTTPRequestHandler] | None = None  # None: TlsHttpServer's own

    def _server_context(self) -> ssl.SSLContext:
        raise NotImplementedError

    def start(self):
        if self._httpd is not None:
            return self
        extra = {"handler": self.handler} if self.handler is not None else {}
        self._httpd = TlsHttpServer((self.host, self._requested_port), self._server_context(), self, **extra)
        self._requested_port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self.thread_label}:{self._requested_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.drop_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._requested_port == 0:
            raise RuntimeError("server has not been started (port 0 is not bound yet)")
        return self._requested_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"


class ExporterServer(ServedOverTls):
    """A running reference exporter on loopback (or any host).

    ``clock`` decides what "now" is for visibility (tests pass a fake one);
    ``visibility_delay_s`` holds back snapshots younger than that, like an
    exporter that only publishes a scrape once it is complete.
    """

    thread_label = "billing-exporter"

    def __init__(
        self,
        shape: TrafficShape,
        tls: Any,
        auth: Literal["bearer", "mtls"] = "bearer",
        bearer_token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        clock: Callable[[], datetime] | None = None,
        visibility_delay_s: float = 0.0,
    ) -> None:
        if auth not in ("bearer", "mtls"):
            raise ValueError("auth must be 'bearer' or 'mtls'")
        if auth == "bearer" and not bearer_token:
            raise ValueError("auth='bearer' needs a non-empty bearer_token")
        self.shape = shape
        self.auth = auth
        self._token = (bearer_token or "").encode()
        self.host = host
        self._requested_port = port
        self._clock = clock or _utc_now
        self._tls = tls
        self.api = SnapshotApi(shape, visibility_delay_s)
        self._lock = threading.Lock()
        self._faults = faults or Faults()
        self._requests = 0

    def __repr__(self) -> str:
        return f"ExporterServer(node_id={self.shape.node_id!r}, auth={self.auth!r}, port={self._requested_port})"

    # -- faults --------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, value: Faults | None) -> None:
        with self._lock:
            self._faults = value or Faults()
            self._requests = 0

    def _injected_failure(self, faults: Faults) -> bool:
        with self._lock:
            number = self._requests
            self._requests += 1
        return faults.rejects(number)

    # -- lifecycle -----------------------------------------------------------

    def _server_context(self) -> ssl.SSLContext:
        return server_ssl_context(self._tls, require_client_cert=self.auth == "mtls")

    # -- requests ------------------------------------------------------------

    def _authenticate(self, authorization: str | None) -> Reply | None:
        if self.auth == "mtls":
            return None  # the handshake already demanded a verified client certificate
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return error(401, "bearer token required", **{"WWW-Authenticate": 'Bearer realm="exporter"'})
        if not hmac.compare_digest(token.strip().encode("utf-8", "surrogateescape"), self._token):
            return error(403, "bearer token rejected")
        return None

    def dispatch(self, path: str, raw_query: str, authorization: str | None) -> Reply:
        faults = self._faults
        if path == HEALTH_PATH:
            return error(503, "exporter down (injected fault)") if faults.down else Reply(200, b'{"status":"ok"}')
        if path not in (WINDOW_PATH, LATEST_PATH):
            return error(404, "not found")
        denied = self._authenticate(authorization)
        if denied is not None:
            return denied
        if self._injected_failure(faults):
            return error(503, "exporter unavailable (injected fault)")
        if faults.delay_s > 0:
            time.sleep(faults.delay_s)
        now = self._clock()
        if path == LATEST_PATH:
            return self.api.latest(now, faults)
        try:
            query = _query(raw_query)
        except ValueError as exc:
            return error(400, str(exc))
        return self.api.window(query, now, faults)
