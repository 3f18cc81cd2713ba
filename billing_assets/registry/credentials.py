"""Resolving `credential_ref` to a secret, one source at a time.

Secrets are resolved at request time for the one source being fetched, so a
missing token fails that source only, and no other source's secret is ever
loaded into its client. Errors name the reference, never its content, and
the value travels as pydantic's `SecretStr`, which prints as asterisks.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pydantic import SecretStr


class CredentialError(ValueError):
    pass


def check_private_file(path: Path, what: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise CredentialError(f"{what} file {path} cannot be read ({error.strerror})") from None
    if mode & stat.S_IROTH:
        raise CredentialError(f"{what} file {path} is world-readable; chmod 600 it")


def resolve_secret(ref: str, what: str = "credential") -> SecretStr:
    if ref.startswith("env:"):
        name = ref[4:]
        value = os.environ.get(name)
        if not value:
            raise CredentialError(f"{what} environment variable {name} is not set")
        return SecretStr(value.strip())
    if ref.startswith("file:"):
        path = Path(ref[5:])
        check_private_file(path, what)
        try:
            value = path.read_text()
        except OSError as error:
            raise CredentialError(f"{what} file {path} cannot be read ({error.strerror})") from None
        if not value.strip():
            raise CredentialError(f"{what} file {path} is empty")
        return SecretStr(value.strip() if "PRIVATE KEY" not in value else value)
    raise CredentialError(f"{what} reference must be env:NAME or file:/path")


def _is_header_safe(token: str) -> bool:
    return all(0x21 <= ord(char) <= 0x7E for char in token)


def resolve_bearer_token(ref: str) -> SecretStr:
    """The token of one source, checked to be sendable as a header value.

    A token with a line break or non-ASCII character would otherwise fail
    deep inside the HTTP library, in an exception that may quote the header.
    """
    token = resolve_secret(ref, "bearer token")
    if not _is_header_safe(token.get_secret_value()):
        raise CredentialError(
            f"bearer token in {ref} holds characters not allowed in a token (only printable ASCII without spaces)"
        )
    return token
