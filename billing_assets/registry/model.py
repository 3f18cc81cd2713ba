"""Registry entries, validated on load so a bad entry fails loudly by name.

A registry mistake (an `http://` URL, a missing CA, two sources claiming the
same node) would either leak credentials or mix two nodes' usage, so every
rule from the design card is checked here, before anything is fetched.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from billing_assets.core.plausibility import DEFAULT_MAX_BYTES_PER_SECOND, MAX_BYTES_PER_SECOND_LIMIT
from billing_assets.core.timeutil import parse_duration, utc

SOURCE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DNS_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class RegistryError(ValueError):
    """The registry file cannot be used; the message names the source and field."""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Shared by every HTTPS peer we configure (exporter sources, remittance
# targets), so a rule tightened for one is tightened for all.


def check_base_url(value: str, *, allow_plain_http: bool = False) -> str:
    # Messages never echo the URL: a malformed one may carry userinfo.
    parts = urlsplit(value.strip())
    if parts.username or parts.password:
        raise ValueError("must not carry credentials; use credential_ref")
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be https://, not {scheme}://" if scheme and parts.netloc else "must be https://host[:port]")
    if not parts.hostname:
        raise ValueError("has no host")
    try:
        parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query or fragment")
    if scheme == "http":
        if not allow_plain_http:
            raise ValueError("must be https:// (plain http:// needs dev_allow_plain_http: true and a loopback address)")
        if not _is_loopback(parts.hostname):
            raise ValueError("plain http:// is allowed only for loopback addresses, even with dev_allow_plain_http")
    # Store "HTTPS://" as "https://": urlsplit lowercases the scheme but string
    # checks do not, and no later check may read it as non-TLS.
    return urlunsplit(parts._replace(scheme=scheme))


def check_server_name(value: str, peer: str = "exporter") -> str:
    if not (DNS_NAME.match(value) or _is_ip(value)):
        raise ValueError(f"must be the host name in the {peer}'s certificate (no scheme, port or path)")
    return value


def check_credential_ref(value: str) -> str:
    if not (value.startswith("env:") and len(value) > 4) and not (value.startswith("file:/")):
        raise ValueError("must be 'env:NAME' or 'file:/absolute/path'")
    return value


def check_ca_bundle_ref(value: str) -> str:
    if not value.startswith("file:/"):
        raise ValueError("must be 'file:/absolute/path' to the pinned CA bundle")
    return value


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source_id: str
    node_id: str = Field(min_length=1)
    env: str = Field(min_length=1)
    # Declared before base_url so base_url's validator can see it.
    dev_allow_plain_http: bool = False
    base_url: str
    enabled: bool = True
    mode: Literal["window", "legacy_latest", "dual"] = "window"
    auth_mode: Literal["mtls", "bearer"]
    credential_ref: str
    ca_bundle_ref: str
    server_name: str = Field(min_length=1)
    collect_interval: timedelta = timedelta(seconds=60)
    request_timeout: timedelta = timedelta(seconds=10)
    billing_start: datetime
    overlap: timedelta = timedelta(seconds=60)
    lag_budget: timedelta = timedelta(minutes=10)
    # Plausibility bound per series and direction (core/plausibility.py): a delta
    # above rate x elapsed is held in usage_quarantine, not billed.
    max_bytes_per_second: int = Field(default=DEFAULT_MAX_BYTES_PER_SECOND, ge=1, le=MAX_BYTES_PER_SECOND_LIMIT)
    page_limit: int = Field(default=100, ge=1, le=1000)
    # Decoded bytes of one response: gzip makes the wire size meaningless, and a
    # page is held whole for validation, so this bounds memory per source.
    max_page_bytes: int = Field(default=64 * 2**20, gt=0, le=2**30)

    @field_validator("source_id")
    @classmethod
    def _source_id(cls, value: str) -> str:
        if not SOURCE_ID.match(value):
            raise ValueError("may hold only letters, digits, '-', '_' and '.' (1-64 characters)")
        # The id is the source half of a multi-partition key, and a range is written
        # 'START|src...END|src' and split on '...': a '..' in the id or a '.' at
        # its end (which joins the separator) makes that split land in the wrong place.
        if ".." in value:
            raise ValueError("must not contain '..': a partition range 'START|id...END|id' is split on '...'")
        if value.startswith(".") or value.endswith("."):
            raise ValueError("must not start or end with '.': a partition range 'START|id...END|id' is split on '...'")
        return value

    @field_validator("collect_interval", "request_timeout", "overlap", "lag_budget", mode="before")
    @classmethod
    def _duration(cls, value):
        return parse_duration(value) if isinstance(value, (str, int, float)) else value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str, info: ValidationInfo) -> str:
        return check_base_url(value, allow_plain_http=bool(info.data.get("dev_allow_plain_http")))

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, value: str) -> str:
        return check_server_name(value)

    @field_validator("billing_start")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return utc(value)

    @field_validator("credential_ref")
    @classmethod
    def _credential_ref(cls, value: str) -> str:
        return check_credential_ref(value)

    @field_validator("ca_bundle_ref")
    @classmethod
    def _ca_bundle_ref(cls, value: str) -> str:
        return check_ca_bundle_ref(value)

    @property
    def plain_http(self) -> bool:
        """Only ever true for a validated local-development entry (flag set, loopback host)."""
        return urlsplit(self.base_url).scheme == "http"

    @property
    def ca_bundle_path(self) -> Path:
        return Path(self.ca_bundle_ref.removeprefix("file:"))


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: tuple[Source, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> "Registry":
        seen_ids: set[str] = set()
        seen_nodes: dict[tuple[str, str], str] = {}
        for source in self.sources:
            if source.source_id in seen_ids:
                raise ValueError(f"source {source.source_id!r} is listed twice")
            seen_ids.add(source.source_id)
            node = (source.node_id, source.env)
            if node in seen_nodes:
                raise ValueError(
                    f"sources {seen_nodes[node]!r} and {source.source_id!r} both claim node_id={node[0]!r} env={node[1]!r}; "
                    "their usage would be billed into the same buckets"
                )
            seen_nodes[node] = source.source_id
        return self

    def get(self, source_id: str) -> Source:
        for source in self.sources:
            if source.source_id == source_id:
                return source
        raise RegistryError(f"source {source_id!r} is not in the registry")

    @property
    def enabled(self) -> list[Source]:
        return [source for source in self.sources if source.enabled]


def _describe(error: ValidationError, raw: dict) -> str:
    lines = []
    for item in error.errors():
        loc = list(item["loc"])
        where = "registry"
        if len(loc) >= 2 and loc[0] == "sources" and isinstance(loc[1], int):
            entries = raw.get("sources") or []
            entry = entries[loc[1]] if loc[1] < len(entries) else {}
            name = entry.get("source_id") if isinstance(entry, dict) else None
            where = f"source {name!r}" if name else f"sources[{loc[1]}]"
            loc = loc[2:]
        field = ".".join(str(part) for part in loc) or "(entry)"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: field {field}: {message}")
    return "; ".join(lines)


def parse_registry(raw: object, origin: str = "registry") -> Registry:
    if not isinstance(raw, dict) or "sources" not in raw:
        raise RegistryError(f"{origin}: expected a mapping with a 'sources:' list")
    if not isinstance(raw["sources"], list):
        raise RegistryError(f"{origin}: 'sources' must be a list")
    try:
        return Registry.model_validate(raw)
    except ValidationError as error:
        raise RegistryError(f"{origin}: {_describe(error, raw)}") from None


def describe_yaml_error(error: yaml.YAMLError) -> str:
    """Where and what, as a person fixes it: `line 7, column 3: mapping values are not allowed here`.

    Never the offending text itself: a mistyped line may hold a token.
    """
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or error.__class__.__name__
    if mark is None:
        return str(problem)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def read_yaml_file(path: str | Path, what: str, error: type[ValueError]) -> object:
    """A YAML file's content, or `error` naming the file and, for bad YAML, line and column."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as problem:
        raise error(f"{path}: cannot read {what} ({problem.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as problem:
        raise error(f"{path}: not valid YAML: {describe_yaml_error(problem)}") from None


def load_registry(path: str | Path) -> Registry:
    """Read and validate the registry; any problem raises `RegistryError`.

    Callers must treat an error as "unknown", never as "no sources": deleting
    partitions because a file failed to parse would hide billing data.
    """
    return parse_registry(read_yaml_file(path, "registry", RegistryError), str(path))
