"""Remittance targets as named once in the accounts file.

Validated with the same rules as exporter sources (the checks are shared with
`registry.model`), because a Kill Bill target carries credentials exactly like
a source does: an `http://` URL or an unpinned CA would leak them.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from billing_assets.core.timeutil import parse_duration
from billing_assets.registry.model import check_base_url, check_ca_bundle_ref, check_credential_ref, check_server_name


class KillBillTarget(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["killbill"]
    base_url: str
    auth_mode: Literal["bearer", "basic"]
    # For basic auth the secret is "user:password"; for bearer, the token.
    credential_ref: str
    ca_bundle_ref: str
    server_name: str = Field(min_length=1)
    one_record_per_hour: bool = False
    request_timeout: timedelta = timedelta(seconds=10)
    max_in_flight: int = Field(default=8, ge=1, le=256)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        # No dev switch: a remittance target is always reached over TLS.
        if value.strip().lower().startswith("http://"):
            raise ValueError("must be https:// (a remittance target is never reached over plain http)")
        return check_base_url(value, allow_plain_http=False).rstrip("/")

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, value: str) -> str:
        return check_server_name(value, peer="target")

    @field_validator("credential_ref")
    @classmethod
    def _credential_ref(cls, value: str) -> str:
        return check_credential_ref(value)

    @field_validator("ca_bundle_ref")
    @classmethod
    def _ca_bundle_ref(cls, value: str) -> str:
        return check_ca_bundle_ref(value)

    @field_validator("request_timeout", mode="before")
    @classmethod
    def _duration(cls, value):
        return parse_duration(value) if isinstance(value, (str, int, float)) else value

    @field_validator("request_timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be a positive duration")
        return value

    @property
    def ca_bundle_path(self) -> Path:
        return Path(self.ca_bundle_ref.removeprefix("file:"))


class CsvTarget(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["csv"]
    directory: Path
    one_record_per_hour: bool = False

    @field_validator("directory")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # A relative directory would depend on the daemon's working directory,
        # so two runs could write "the same" file in two places.
        if not value.is_absolute():
            raise ValueError("must be an absolute path")
        return value


Target = Annotated[Union[KillBillTarget, CsvTarget], Field(discriminator="kind")]
