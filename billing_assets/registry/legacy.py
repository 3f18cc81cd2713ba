"""The single legacy source described by `EXPORTER_*` variables (rollout phase 1).

Before a registry exists, a node is described by the environment the old
collector used. It becomes an ordinary `Source` (id `legacy`, mode
`legacy_latest`) validated by the same model as registry entries, so the same
rules hold: https only, a pinned CA, a credential reference, never a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from pydantic import ValidationError

from billing_assets.registry.model import RegistryError, Source

LEGACY_SOURCE_ID = "legacy"
BASE_URL_VAR = "EXPORTER_BASE_URL"
REQUIRED = ("EXPORTER_NODE_ID", "EXPORTER_ENV", "EXPORTER_CA_BUNDLE", "EXPORTER_CREDENTIAL_REF", "EXPORTER_BILLING_START")
FIELD_VARS = {
    "node_id": "EXPORTER_NODE_ID",
    "env": "EXPORTER_ENV",
    "base_url": BASE_URL_VAR,
    "ca_bundle_ref": "EXPORTER_CA_BUNDLE",
    "server_name": "EXPORTER_SERVER_NAME",
    "auth_mode": "EXPORTER_AUTH_MODE",
    "credential_ref": "EXPORTER_CREDENTIAL_REF",
    "billing_start": "EXPORTER_BILLING_START",
}


def legacy_source_from_env(environ: Mapping[str, str]) -> Source | None:
    """The legacy source, None when `EXPORTER_BASE_URL` is unset; `RegistryError` naming the variable otherwise."""
    base_url = (environ.get(BASE_URL_VAR) or "").strip()
    if not base_url:
        return None
    missing = [name for name in REQUIRED if not (environ.get(name) or "").strip()]
    if missing:
        raise RegistryError(f"{BASE_URL_VAR} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not")
    ca_bundle = environ["EXPORTER_CA_BUNDLE"].strip()
    raw = {
        "source_id": LEGACY_SOURCE_ID,
        "node_id": environ["EXPORTER_NODE_ID"].strip(),
        "env": environ["EXPORTER_ENV"].strip(),
        "base_url": base_url,
        "mode": "legacy_latest",
        "auth_mode": (environ.get("EXPORTER_AUTH_MODE") or "bearer").strip(),
        "credential_ref": environ["EXPORTER_CREDENTIAL_REF"].strip(),
        "ca_bundle_ref": ca_bundle if ca_bundle.startswith("file:") else f"file:{ca_bundle}",
        "server_name": (environ.get("EXPORTER_SERVER_NAME") or "").strip() or _host(base_url),
        "billing_start": environ["EXPORTER_BILLING_START"].strip(),
    }
    try:
        return Source.model_validate(raw)
    except ValidationError as error:
        raise RegistryError(f"legacy source from environment: {_describe(error)}") from None


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _describe(error: ValidationError) -> str:
    """Problems named by environment variable; values are never echoed (a URL may carry userinfo)."""
    problems = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "(entry)"
        where = FIELD_VARS.get(field, field)
        problems.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)
