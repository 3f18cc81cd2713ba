"""A total deadline per request, enforced on every socket operation.

httpx's timeouts apply per operation: an exporter sending one byte a second
never trips a 10 s read timeout, so a 4 KB page takes an hour and its run
hangs with it. Here each connect, TLS handshake, write and read is given at
most what is left of its request's budget, and none starts once the budget
is spent. A request therefore ends within one socket operation's scheduling
slack of its deadline, whatever the peer sends or withholds, headers
included (checking the clock between body chunks alone would not stop a
peer dripping its headers, nor one pausing just under the read timeout).

httpx has no public hook for its network layer (encode/httpx#3749 proposes
one), but httpcore's network backends are public API; the transport is
httpx's own with its connection pool rebuilt on a clamping backend.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpcore
import httpx


class Deadline:
    """The current request's expiry; shared by every connection of one client.

    A kept-alive connection serves several requests, so the expiry lives
    here and not on the connection.
    """

    def __init__(self) -> None:
        self._expires: float | None = None

    @contextmanager
    def running(self, seconds: float) -> Iterator[None]:
        self._expires = time.monotonic() + seconds
        try:
            yield
        finally:
            self._expires = None

    def clamp(self, timeout: float | None, timed_out: type[Exception]) -> float | None:
        if self._expires is None:
            return timeout
        left = self._expires - time.monotonic()
        if left <= 0:
            raise timed_out("total deadline exceeded")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._deadline.clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None):
        timeout = self._deadline.clamp(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, timeout), self._deadline)

    def get_extra_info(self, info: str):
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, deadline: Deadline) -> None:
        self._inner = httpcore.SyncBackend()
        self._deadline = deadline

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        timeout = self._deadline.clamp(timeout, httpcore.ConnectTimeout)
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        timeout = self._deadline.clamp(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, timeout, socket_options), self._deadline)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def deadline_transport(verify: ssl.SSLContext | bool, deadline: Deadline) -> httpx.HTTPTransport:
    """httpx's transport (request/response mapping, error types) over a deadline-clamped pool.

    `verify` is the source's pinned context; only a plain-http dev source
    passes True, and it never makes a TLS connection.
    """
    transport = httpx.HTTPTransport(verify=verify, trust_env=False)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=verify if isinstance(verify, ssl.SSLContext) else None,
        max_connections=4,
        keepalive_expiry=5.0,
        network_backend=_DeadlineBackend(deadline),
    )
    return transport
