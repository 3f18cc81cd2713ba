"""A raw TLS exporter that misbehaves on purpose, one scripted fault at a time.

The reference exporter is built to be correct; an attacker or a broken
exporter is not, and the faults that matter live below the JSON: a body
dripped a byte at a time, a gzip bomb, a body with no end, a cursor that
never repeats. So this server speaks HTTP/1.1 itself over plain sockets and
`ssl`, with certificates minted at start, and writes exactly the bytes a
fault calls for. With no fault installed it serves a small, valid window
(two users, one snapshot every 15 s, totals growing with time), so "a later
run succeeds once the exporter behaves" runs against the same server.

Large bodies (the bomb, the huge plain body) are generated while they are
sent, never held: the server stops as soon as the client hangs up.
"""

from __future__ import annotations

import json
import math
import secrets
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from billing_assets.core.timeutil import format_rfc3339
from billing_assets.exporter import generate_tls_material

SNAPSHOT_EVERY = timedelta(seconds=15)
USERS = ("hostile-user-a", "hostile-user-b")
BLOCK = 1 << 20


@dataclass(frozen=True)
class Heard:
    """One request as the exporter saw it."""

    path: str
    query: dict[str, str]
    at: float  # time.monotonic()


@dataclass
class Request:
    path: str
    query: dict[str, str]
    authorized: bool


# -- what a well-behaved exporter would send -----------------------------------


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


def snapshot_times(since: datetime, until: datetime) -> list[datetime]:
    step = SNAPSHOT_EVERY.total_seconds()
    at = datetime.fromtimestamp(math.ceil(since.timestamp() / step) * step, timezone.utc)
    times = []
    while at < until:
        times.append(at)
        at += SNAPSHOT_EVERY
    return times


def sample(user: str, at: datetime) -> dict:
    """Totals grow 100 bytes/s from the epoch: monotonic across windows, small per minute."""
    total = int(at.timestamp()) * 100
    return {"uuid": user, "email": f"{user}@example.test", "inbound_tag": "vless-in",
            "uplink_bytes_total": total, "downlink_bytes_total": 2 * total}


def window_page(exporter: "HostileExporter", query: dict[str, str], *, next_cursor: str | None = None) -> dict:
    since, until = _instant(query["since"]), _instant(query["until"])
    items = [{"collected_at": format_rfc3339(at), "samples": [sample(user, at) for user in USERS]}
             for at in snapshot_times(since, until)]
    return {
        "source_id": exporter.source_id, "node_id": exporter.node_id, "env": exporter.env,
        "window_start": query["since"], "window_end": query["until"], "items": items,
        "next_cursor": next_cursor, "has_more": next_cursor is not None,
        "emitted_at": format_rfc3339(datetime.now(timezone.utc)),
    }


def encode(page: dict) -> bytes:
    return json.dumps(page, separators=(",", ":")).encode()


def head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Hostile'}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def json_reply(body: bytes, status: int = 200, **extra: str) -> bytes:
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), **extra}
    return head(status, headers) + body


class Behave:
    """The valid answer; every fault falls back to it when it is done misbehaving."""

    def serve(self, conn: ssl.SSLSocket, request: Request, exporter: "HostileExporter") -> bool:
        conn.sendall(json_reply(encode(window_page(exporter, request.query))))
        return True


# -- faults ------------------------------------------------------------------------


@dataclass
class Drip(Behave):
    """A valid page sent one byte every `every_s`, headers too if `headers`; gives up after `max_s`."""

    every_s: float = 0.05
    headers: bool = False
    max_s: float = 30.0

    def serve(self, conn, request, exporter) -> bool:
        reply = json_reply(encode(window_page(exporter, request.query)))
        split = 0 if self.headers else reply.index(b"\r\n\r\n") + 4
        conn.sendall(reply[:split])
        ends = time.monotonic() + self.max_s
        for offset in range(split, len(reply)):
            if time.monotonic() > ends:
                return False
            conn.sendall(reply[offset:offset + 1])
            time.sleep(self.every_s)
        return True


def _padded_page(exporter, request: Request, padding: int) -> Iterator[bytes]:
    """A valid page whose JSON carries `padding` bytes of whitespace: huge, yet parseable if read whole."""
    text = encode(window_page(exporter, request.query))
    cut = text.index(b'"items":')
    yield text[:cut]
    for start in range(0, padding, BLOCK):
        yield b" " * min(BLOCK, padding - start)
    yield text[cut:]


@dataclass
class GzipBomb(Behave):
    """`Content-Encoding: gzip`, about a thousandth of `decoded_bytes` on the wire, compressed as it is sent."""

    decoded_bytes: int = 1 << 30
    sent_bytes: int = 0

    def serve(self, conn, request, exporter) -> bool:
        conn.sendall(head(200, {"Content-Type": "application/json", "Content-Encoding": "gzip", "Connection": "close"}))
        packer = zlib.compressobj(6, zlib.DEFLATED, 31)
        for part in _padded_page(exporter, request, self.decoded_bytes):
            self._send(conn, packer.compress(part))
        self._send(conn, packer.flush())
        return False

    def _send(self, conn, data: bytes) -> None:
        if data:
            conn.sendall(data)
            self.sent_bytes += len(data)


@dataclass
class HugeBody(Behave):
    """A plain body of `size` bytes; with `declared`, a Content-Length says so up front, else it ends at close."""

    size: int = 600 << 20
    declared: bool = False

    def serve(self, conn, request, exporter) -> bool:
        parts = list(_padded_page(exporter, request, 0))
        padding = max(0, self.size - sum(len(p) for p in parts))
        headers = {"Content-Type": "application/json", "Connection": "close"}
        if self.declared:
            headers["Content-Length"] = str(padding + sum(len(p) for p in parts))
        conn.sendall(head(200, headers))
        for part in _padded_page(exporter, request, padding):
            conn.sendall(part)
        return False


@dataclass
class FreshCursors(Behave):
    """has_more forever, each time with a new cursor of `chars` characters; honest after `give_up_after` pages."""

    chars: int = 16
    give_up_after: int = 5000
    served: int = 0

    def serve(self, conn, request, exporter) -> bool:
        self.served += 1
        if self.served > self.give_up_after:
            return super().serve(conn, request, exporter)
        cursor = f"{self.served:x}".rjust(self.chars, "-")
        page = window_page(exporter, request.query, next_cursor=cursor)
        page["items"] = []
        conn.sendall(json_reply(encode(page)))
        return True


class CorruptGzip(Behave):
    """Says gzip, starts like gzip, then garbage."""

    def serve(self, conn, request, exporter) -> bool:
        body = zlib.compress(encode(window_page(exporter, request.query)), wbits=31)[:12] + b"\xff" * 200
        conn.sendall(head(200, {"Content-Type": "application/json", "Content-Encoding": "gzip",
                                "Content-Length": str(len(body))}) + body)
        return True


@dataclass
class Refuse(Behave):
    """`status` with `Retry-After: retry_after` for the first `times` requests (None: forever), then behaves."""

    status: int = 429
    retry_after: str | None = "1"
    times: int | None = None
    refused: int = 0

    def serve(self, conn, request, exporter) -> bool:
        if self.times is not None and self.refused >= self.times:
            return super().serve(conn, request, exporter)
        self.refused += 1
        extra = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
        conn.sendall(json_reply(b'{"error":"slow down"}', self.status, **extra))
        return True


@dataclass
class Tamper(Behave):
    """A valid page with one field replaced: `field` of the first sample, or of the envelope if `envelope`."""

    field: str = "uplink_bytes_total"
    value: object = 2**64
    envelope: bool = False

    def serve(self, conn, request, exporter) -> bool:
        page = window_page(exporter, request.query)
        target = page if self.envelope else page["items"][0]["samples"][0]
        target[self.field] = self.value
        conn.sendall(json_reply(encode(page)))
        return True


# -- the server ------------------------------------------------------------------------


@dataclass
class HostileExporter:
    """One source's exporter on 127.0.0.1 whose certificate names only `server_name`."""

    root: Path
    source_id: str
    env: str = "test"
    fault: Behave | None = None
    heard: list[Heard] = field(default_factory=list)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(20), repr=False)

    def __post_init__(self) -> None:
        self.node_id = f"node-{self.source_id}"
        self.server_name = f"{self.source_id}.hostile.test"
        self.tls = generate_tls_material(self.root / "hostile-tls" / self.source_id, server_names=(self.server_name,))
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(self.tls.server_cert, self.tls.server_key)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._listener.getsockname()[1]}"

    @property
    def token_variable(self) -> str:
        return f"BILLING_TEST_HOSTILE_TOKEN_{self.source_id.upper().replace('-', '_').replace('.', '_')}"

    def registry_entry(self, billing_start: datetime, **overrides) -> dict:
        return {
            "source_id": self.source_id, "node_id": self.node_id, "env": self.env, "base_url": self.url,
            "auth_mode": "bearer", "credential_ref": f"env:{self.token_variable}",
            "ca_bundle_ref": f"file:{self.tls.ca_cert}", "server_name": self.server_name,
            "request_timeout": "5s", "billing_start": format_rfc3339(billing_start), **overrides,
        }

    def start(self) -> "HostileExporter":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            for conn in list(self._open):
                _quietly(conn.close)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                raw, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        with self._lock:
            self._open.add(raw)
        try:
            raw.settimeout(10)
            with self._context.wrap_socket(raw, server_side=True) as conn:
                while not self._stopping.is_set():
                    request = self._read_request(conn)
                    if request is None or not self._answer(conn, request):
                        break
        except (OSError, ssl.SSLError, ValueError):
            pass  # the client hung up, as a client facing a hostile exporter should
        finally:
            with self._lock:
                self._open.discard(raw)
            _quietly(raw.close)

    def _answer(self, conn: ssl.SSLSocket, request: Request) -> bool:
        self.heard.append(Heard(request.path, request.query, time.monotonic()))
        if not request.authorized:
            conn.sendall(json_reply(b'{"error":"forbidden"}', 403))
            return True
        if request.path != "/v1/snapshots/window":
            conn.sendall(json_reply(b'{"error":"not found"}', 404))
            return True
        return (self.fault or Behave()).serve(conn, request, self)

    def _read_request(self, conn: ssl.SSLSocket) -> Request | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk or len(data) > 1 << 16:
                return None
            data += chunk
        lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        target = lines[0].split(" ")[1]
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        url = urlsplit(target)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        return Request(url.path, query, headers.get("authorization") == f"Bearer {self.token}")


def _quietly(action) -> None:
    try:
        action()
    except OSError:
        pass
