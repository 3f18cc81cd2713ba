"""Per-source TLS contexts: pinned CA, verification always on, optional client cert.

There is deliberately no switch to disable verification. The CA bundle is the
source's own (never the system store), so a certificate from any other issuer
is refused even if it is publicly trusted.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

from billing_assets.registry.credentials import CredentialError, check_private_file, resolve_secret
from billing_assets.registry.model import Source
from billing_assets.transport.errors import SourceFetchError


class PinnedCaError(ValueError):
    """The pinned CA bundle cannot be used; the message names the file, not its content."""


def pinned_client_context(ca_bundle_path: Path) -> ssl.SSLContext:
    """A verifying client context that trusts only ``ca_bundle_path``.

    Shared by exporter sources and remittance targets, so both peers get the
    same floor (TLS 1.2, hostname check, no system store).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cafile=str(ca_bundle_path))
    except (OSError, ssl.SSLError) as error:
        raise PinnedCaError(f"pinned CA bundle {ca_bundle_path} cannot be loaded ({_short(error)})") from None
    return context


def build_ssl_context(source: Source) -> ssl.SSLContext:
    try:
        context = pinned_client_context(source.ca_bundle_path)
    except PinnedCaError as error:
        raise SourceFetchError(source.source_id, str(error)) from None
    if source.auth_mode == "mtls":
        _load_client_certificate(context, source)
    return context


def _load_client_certificate(context: ssl.SSLContext, source: Source) -> None:
    ref = source.credential_ref
    try:
        if ref.startswith("file:"):
            path = Path(ref[5:])
            check_private_file(path, "client certificate/key")
            context.load_cert_chain(str(path))
            return
        pem = resolve_secret(ref, "client certificate/key").get_secret_value()
        with tempfile.TemporaryDirectory(prefix="billing-mtls-") as private_dir:
            path = Path(private_dir) / "client.pem"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(pem)
            context.load_cert_chain(str(path))
    except CredentialError as error:
        raise SourceFetchError(source.source_id, str(error)) from None
    except (OSError, ssl.SSLError) as error:
        raise SourceFetchError(
            source.source_id, f"client certificate/key from {ref.split(':')[0]} reference is unusable ({_short(error)})"
        ) from None


def _short(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError):
        return error.reason or error.__class__.__name__
    if isinstance(error, OSError):
        return error.strerror or error.__class__.__name__
    return error.__class__.__name__


# Alerts the exporter sends when it refuses *us*; OpenSSL's names are exact but
# cryptic, so the reason leads with what the operator has to fix.
_PEER_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the exporter requires a client certificate (mTLS) and none was presented",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the exporter refused the handshake (client certificate missing or not acceptable?)",
    "TLSV1_ALERT_UNKNOWN_CA": "the exporter does not trust our client certificate (unknown CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the exporter rejected our client certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the exporter rejected our client certificate as expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the exporter rejected our client certificate as revoked",
    "WRONG_VERSION_NUMBER": "the endpoint does not speak TLS",
}


def describe_tls_failure(error: BaseException) -> str | None:
    """A human reason for a TLS failure found anywhere in an exception chain."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed: {error.verify_message or error.reason}"
        if isinstance(error, ssl.SSLError):
            reason = error.reason or error.__class__.__name__
            hint = _PEER_ALERTS.get(reason)
            return f"TLS handshake failed: {hint} ({reason})" if hint else f"TLS handshake failed: {reason}"
        error = error.__cause__ or error.__context__
    return None
