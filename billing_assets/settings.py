"""Every `BILLING_*` setting, read from the environment in one place and passed down.

The environment, not Dagster run config, because the same values must hold
in every process that decides about billing: the code server (sensors,
schedules, the UI's partitions), run workers, and the `billing` command. A
caller reads them once (`Settings.from_env()`) per run, sensor tick or
command and passes the object on; nothing below reads `os.environ` itself.

The README's "Environment" table lists exactly the variables here (plus the
legacy `EXPORTER_*` shim, registry/legacy.py, and the Dagster ones the code
location defaults, defs/event_volume.py); `test_settings.py` compares them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta

from billing_assets.core.timeutil import parse_duration

DEFAULT_DATABASE_URL = "sqlite:///.billing/billing.sqlite"
DEFAULT_SOURCES_FILE = "sources.yaml"
DEFAULT_DEDUP_HORIZON = timedelta(days=32)


class SettingsError(ValueError):
    """A variable is set to something unusable; the message names it."""


@dataclass(frozen=True)
class Settings:
    database_url: str = field(
        default=DEFAULT_DATABASE_URL,
        metadata={"meaning": 'the billing database (SQLAlchemy URL; PostgreSQL in production).'},
    )
    sources_file: str = field(
        default=DEFAULT_SOURCES_FILE,
        metadata={"meaning": 'the source registry.'},
    )
    pricing_file: str | None = field(
        default=None,
        metadata={"meaning": 'the price list (default: the built-in standard plan).'},
    )
    dedup_horizon: timedelta = field(
        default=DEFAULT_DEDUP_HORIZON,
        metadata={"meaning": 'how long sample identities are remembered; older windows are refused, older rows pruned.'},
    )
    partitions_start: str | None = field(
        default=None,
        metadata={"meaning": 'pin the first minute partition (`%Y-%m-%d-%H:%M`) for every process.'},
    )
    collect_lag: timedelta = field(
        default=timedelta(seconds=30),
        metadata={"meaning": 'a window is due once `now - lag` is past its end (exporters publish a little late).'},
    )
    collect_overlap: timedelta = field(
        default=timedelta(minutes=1),
        metadata={"meaning": 'windows before the checkpoint re-requested with each collection run.'},
    )
    collect_max_range: timedelta = field(
        default=timedelta(hours=2),
        metadata={"meaning": 'longest range of one collection run (catch-up after an outage).'},
    )
    collect_max_backoff: timedelta = field(
        default=timedelta(minutes=10),
        metadata={"meaning": 'longest wait between attempts at a failing source.'},
    )
    accounts_file: str = field(
        default="accounts.yaml",
        metadata={"meaning": "the accounts file: targets and who pays for which user."},
    )
    remit_settle: timedelta = field(
        default=timedelta(minutes=10),
        metadata={"meaning": "how far past an hour's end every source must have collected before the hour is remitted."},
    )
    remit_backoff: timedelta = field(
        default=timedelta(seconds=30),
        metadata={"meaning": "first retry delay of a retryable remittance record (doubles per attempt, capped at 1 h)."},
    )
    remit_lookback: timedelta = field(
        default=timedelta(hours=48),
        metadata={"meaning": "how many hours back the remittance sensor looks for hours to remit."},
    )
    reconcile_horizon: timedelta = field(
        default=timedelta(hours=2),
        metadata={"meaning": 'how far back the reconcile schedule re-materializes each source.'},
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        values = {}
        for setting in fields(cls):
            raw = (environ.get(variable(setting.name)) or "").strip()
            if not raw:
                continue
            if setting.type in ("timedelta", timedelta):
                try:
                    values[setting.name] = parse_duration(raw)
                except ValueError as error:
                    raise SettingsError(f"{variable(setting.name)}={raw!r}: {error}") from None
            else:
                values[setting.name] = raw
        return cls(**values)


def variable(field_name: str) -> str:
    """The environment variable of a setting: `BILLING_` + its name in capitals."""
    return f"BILLING_{field_name.upper()}"


def variables() -> dict[str, str]:
    """{variable: meaning} of every setting, for docs and the README check."""
    return {variable(f.name): f.metadata["meaning"] for f in fields(Settings)}
