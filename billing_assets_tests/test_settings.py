"""One config surface: the README's table lists exactly the variables the code reads."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from billing_assets.defs import event_volume
from billing_assets.registry import legacy
from billing_assets.settings import Settings, SettingsError, variables

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"[\"'`]((?:BILLING|EXPORTER|DAGSTER)_[A-Z0-9_]+)[\"'`]")


def _readme_variables() -> set[str]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Environment"):text.index("## Dependencies and why")]
    names = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def _names_in_code() -> set[str]:
    names = set()
    for path in (ROOT / "billing_assets").rglob("*.py"):
        if "exporter" in path.parts or "devtools" in path.parts:
            continue  # the reference exporter and test tooling are not the billing system's settings
        names |= set(NAME.findall(path.read_text()))
    return names


def test_readme_table_lists_exactly_what_the_code_reads():
    read = set(variables()) | set(legacy.FIELD_VARS.values()) | set(event_volume.DEFAULTS) | {"DAGSTER_HOME"}
    assert _readme_variables() == read
    assert _names_in_code() <= read, "a variable is read outside billing_assets/settings.py's list"


def test_settings_parse_durations_and_name_a_bad_variable():
    settings = Settings.from_env({"BILLING_COLLECT_LAG": "45s", "BILLING_DATABASE_URL": " sqlite:///x.db "})
    assert settings.collect_lag == timedelta(seconds=45) and settings.database_url == "sqlite:///x.db"
    assert Settings.from_env({}) == Settings()
    with pytest.raises(SettingsError, match="BILLING_RECONCILE_HORIZON='soon'"):
        Settings.from_env({"BILLING_RECONCILE_HORIZON": "soon"})
