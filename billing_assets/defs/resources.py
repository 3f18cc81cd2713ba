"""The one resource every asset uses: where the database, registry and prices are.

Every field defaults to the environment's `Settings` (billing_assets/settings.py),
read when the resource is used, so definitions load without touching the
network, the database or any secret.
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import timedelta

import dagster as dg
from sqlalchemy import Engine

from billing_assets.core.pricing import Pricing
from billing_assets.core.timeutil import parse_duration
from billing_assets.registry.legacy import legacy_source_from_env
from billing_assets.registry.model import Registry, load_registry
from billing_assets.registry.pricing_file import load_pricing
from billing_assets.settings import Settings
from billing_assets.storage.engine import get_engine, get_read_engine, migrate, require_schema

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

    def settings(self) -> Settings:
        """The environment's settings with this resource's fields (config, tests) taking precedence."""
        settings = Settings.from_env()
        overrides = {
            name: value
            for name, value in {
                "database_url": self.database_url, "sources_file": self.sources_file, "pricing_file": self.pricing_file,
                "accounts_file": self.accounts_file,
            }.items()
            if value
        }
        for name in ("dedup_horizon", "remit_settle", "remit_backoff", "remit_lookback"):
            if getattr(self, name):
                overrides[name] = parse_duration(getattr(self, name))
        return replace(settings, **overrides)

    def engine(self) -> Engine:
        return migrate(get_engine(self.settings().database_url))

    def read_engine(self, *, require_head: bool = True) -> Engine:
        """For checks, status and sensors: an engine that cannot write or migrate.

        Those run where the database may be read-only (a replica, a SELECT-only
        role, a read-only SQLite directory) and must never wait for a writer's
        lock. A schema that is missing or behind this code raises
        `SchemaNotReady` (a clear message) instead of failing later on a table;
        `require_head=False` skips that check for a caller that copes itself.
        """
        url = self.settings().database_url
        return require_schema(url) if require_head else get_read_engine(url)

    def registry(self) -> Registry:
        """The registry file; without one, the `EXPORTER_*` legacy source if `EXPORTER_BASE_URL` is set."""
        path = self.settings().sources_file
        if not os.path.exists(path):
            legacy = legacy_source_from_env(os.environ)
            if legacy is not None:
                return Registry(sources=(legacy,))
        return load_registry(path)

    def pricing(self) -> Pricing:
        return load_pricing(self.settings().pricing_file)

    def horizon(self) -> timedelta:
        return self.settings().dedup_horizon

    def accounts(self):
        from billing_assets.accounts.model import load_accounts

        return load_accounts(self.settings().accounts_file)

    def accounts_digest(self) -> str | None:
        """sha256 of the accounts file as it is now (None if unreadable), so the sensor notices edits."""
        import hashlib

        try:
            with open(self.settings().accounts_file, "rb") as handle:
                return hashlib.sha256(handle.read()).hexdigest()
        except OSError:
            return None

    def settle(self) -> timedelta:
        return self.settings().remit_settle

    def delivery_settings(self):
        from billing_assets.pipeline.remittance import DeliverySettings

        return DeliverySettings(backoff_base_s=self.settings().remit_backoff.total_seconds())

    def lookback(self) -> timedelta:
        return self.settings().remit_lookback
