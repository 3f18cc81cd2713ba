"""Throwaway TLS material for the reference exporter, generated at runtime.

Nothing here is ever committed: tests and the demo mint a private CA, a
server certificate for the given names only (no IP SANs, so a test can prove
that the client checks ``server_name`` rather than the address it dialled)
and a client certificate for mTLS.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import trustme

_PRIVATE = 0o600


def _write(path: Path, data: bytes, mode: int = 0o644) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is ignored for an existing file
        os.write(fd, data)
    finally:
        os.close(fd)
    return str(path)


@dataclass
class TlsMaterial:
    """Paths of one generated set. ``client_cert_key`` holds the client
    certificate and its key in one PEM (what ``SSLContext.load_cert_chain``
    and a ``file:`` credential_ref take)."""

    dir: str
    ca_cert: str
    server_cert: str
    server_key: str
    client_cert_key: str
    ca: trustme.CA | None = field(default=None, repr=False, compare=False)

    @property
    def client_ca(self) -> str:
        """The CA the server verifies client certificates against: the same
        private CA that issued them."""
        return self.ca_cert


def generate_tls_material(
    directory: str | os.PathLike[str],
    server_names: tuple[str, ...] = ("exporter.test",),
    client_name: str = "billing-client",
    ca: trustme.CA | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> TlsMaterial:
    """Write ca.pem, server.pem, server.key and client.pem into ``directory``.

    ``not_before``/``not_after`` bound the server certificate only, so a test
    can serve an expired or not-yet-valid certificate from an otherwise
    trusted CA. Pass ``ca`` to issue from an existing CA.
    """
    if not server_names:
        raise ValueError("at least one server name is required")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ca = ca or trustme.CA(organization_name="billing-assets test CA")
    server = ca.issue_cert(*server_names, not_before=not_before, not_after=not_after)
    client = ca.issue_cert(client_name, common_name=client_name)
    return TlsMaterial(
        dir=str(out),
        ca_cert=_write(out / "ca.pem", ca.cert_pem.bytes()),
        server_cert=_write(out / "server.pem", b"".join(pem.bytes() for pem in server.cert_chain_pems)),
        server_key=_write(out / "server.key", server.private_key_pem.bytes(), _PRIVATE),
        client_cert_key=_write(out / "client.pem", client.private_key_and_cert_chain_pem.bytes(), _PRIVATE),
        ca=ca,
    )


def write_unrelated_ca_bundle(path: str | os.PathLike[str]) -> str:
    """A CA bundle from a fresh CA that issued nothing we serve: pinning it
    must make verification of the exporter fail ("wrong CA" tests)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return _write(target, trustme.CA(organization_name="unrelated CA").cert_pem.bytes())
