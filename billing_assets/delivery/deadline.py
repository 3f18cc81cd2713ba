"""A total deadline per request, enforced on every socket read and write.

Socket timeouts bound one `recv` at a time, so a peer that answers a few
bytes just before each timeout holds a worker (and a pooled connection) for
as long as it likes. httpx offers no total timeout, but its engine, httpcore,
takes a pluggable network backend; this one wraps the standard sync backend
and cuts every read, write, connect and TLS handshake at the deadline of the
request running in the current thread.

The deadline is thread-local because httpcore's sync pool runs each request,
including a new connection's handshake, in the thread that sent it, and a
pooled connection is used by one request at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import httpcore

_current = threading.local()


@contextmanager
def deadline_in(seconds: float) -> Iterator[float]:
    deadline = time.monotonic() + seconds
    _current.deadline = deadline
    try:
        yield deadline
    finally:
        _current.deadline = None


def _budget(timeout: float | None, on_expiry: type[Exception]) -> float | None:
    deadline = getattr(_current, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise on_expiry("request deadline exceeded")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _budget(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # The sync stream sends in a loop with one timeout per send; a large
        # body to a slow reader is bounded by the socket timeout per chunk.
        self._inner.write(buffer, _budget(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname: str | None = None, timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, _budget(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str):
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, _budget(timeout, httpcore.ConnectTimeout), local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Iterable | None = None):
        raise httpcore.UnsupportedProtocol("unix sockets are not a remittance target")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)
