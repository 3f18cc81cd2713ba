"""The one resource every asset uses: where the database, registry and prices are.

All fields default to environment variables read at run time, so definitions
load without touching the network, the database or any secret.
"""

from __future__ import annotations

import os

import dagster as dg
from sqlalchemy import Engine

from billing_assets.core.pricing import Pricing
from billing_assets.core.timeutil import parse_duration
from billing_assets.registry.legacy import legacy_source_from_env
from billing_assets.registry.model import Registry, load_registry
from billing_assets.registry.pricing_file import load_pricing
from billing_assets.storage.engine import database_url, get_engine, migrate, read_only

DEFAULT_SOURCES_FILE = "sources.yaml"
DEFAULT_ACCOUNTS_FILE = "accounts.yaml"
DEFAULT_REMIT_SETTLE = "10m"


def sources_file() -> str:
    return os.environ.get("BILLING_SOURCES_FILE") or DEFAULT_SOURCES_FILE


class BillingStore(dg.ConfigurableResource):
    """Billing database, source registry and price list for a run."""

    database_url: str | None = None
    sources_file: str | None = None
    pricing_file: str | None = None
    dedup_horizon: str | None = None
    accounts_file: str | None = None
    """`BILLING_ACCOUNTS_FILE`: targets and who pays for which user."""
    remit_settle: str | None = None
    """`BILLING_REMIT_SETTLE`: how far past an hour's end every source must have collected before it is remitted."""
    remit_backoff: str | None = None
    """`BILLING_REMIT_BACKOFF`: first retry delay of a retryable record (doubles per attempt, capped at 1h)."""
    remit_lookback: str | None = None
    """`BILLING_REMIT_LOOKBACK`: how many hours back the remittance sensor looks for hours to remit."""

    def engine(self) -> Engine:
        return migrate(get_engine(self.database_url or database_url()))

    def read_engine(self) -> Engine:
        """For checks, status and sensors: reads that must not wait for a writer."""
        return read_only(self.engine())

    def registry(self) -> Registry:
        """The registry file; without one, the `EXPORTER_*` legacy source if `EXPORTER_BASE_URL` is set."""
        path = self.sources_file or sources_file()
        if not os.path.exists(path):
            legacy = legacy_source_from_env(os.environ)
            if legacy is not None:
                return Registry(sources=(legacy,))
        return load_registry(path)

    def pricing(self) -> Pricing:
        return load_pricing(self.pricing_file or os.environ.get("BILLING_PRICING_FILE"))

    def horizon(self):
        return parse_duration(self.dedup_horizon or os.environ.get("BILLING_DEDUP_HORIZON") or "32d")

    def accounts(self):
        from billing_assets.accounts.model import load_accounts

        return load_accounts(self.accounts_file or os.environ.get("BILLING_ACCOUNTS_FILE") or DEFAULT_ACCOUNTS_FILE)

    def accounts_digest(self) -> str | None:
        """sha256 of the accounts file as it is now (None if unreadable), so the sensor notices edits."""
        import hashlib

        path = self.accounts_file or os.environ.get("BILLING_ACCOUNTS_FILE") or DEFAULT_ACCOUNTS_FILE
        try:
            with open(path, "rb") as handle:
                return hashlib.sha256(handle.read()).hexdigest()
        except OSError:
            return None

    def settle(self):
        return parse_duration(self.remit_settle or os.environ.get("BILLING_REMIT_SETTLE") or DEFAULT_REMIT_SETTLE)

    def delivery_settings(self):
        from billing_assets.pipeline.remittance import DeliverySettings

        base = parse_duration(self.remit_backoff or os.environ.get("BILLING_REMIT_BACKOFF") or "30s")
        return DeliverySettings(backoff_base_s=base.total_seconds())

    def lookback(self):
        return parse_duration(self.remit_lookback or os.environ.get("BILLING_REMIT_LOOKBACK") or "48h")
