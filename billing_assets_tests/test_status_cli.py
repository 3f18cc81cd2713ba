"""`billing status` over real collection state: healthy, lagging, failing, disabled.

State is produced by the real fetch step against real HTTPS exporters (no
Dagster run needed: health reads only the billing database).
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from billing_assets.cli.main import main
from billing_assets.core.timeutil import floor_minute, now_utc
from billing_assets.transport.client import RetryPolicy
from billing_assets.transport.errors import SourceFetchError

NO_RETRY = RetryPolicy(attempts=1)


def _status(capsys, *args):
    code = main(["status", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_status_reports_each_state_and_never_a_secret(billing_env, capsys, monkeypatch):
    now = floor_minute(now_utc())
    start = now - timedelta(hours=4)
    fleet = billing_env.fleet
    healthy = fleet.start("healthy-1", billing_start=start, users=2)
    lagging = fleet.start("lagging-1", billing_start=start, users=2, seed=2)
    failing = fleet.start("failing-1", billing_start=start, users=2, seed=3)
    fleet.start("disabled-1", billing_start=start, users=2, seed=4, enabled=False)
    billing_env.write_registry()

    billing_env.fetch("healthy-1", now - timedelta(minutes=20), now - timedelta(minutes=1), retry=NO_RETRY)
    billing_env.fetch("lagging-1", start, start + timedelta(minutes=30), retry=NO_RETRY)
    billing_env.fetch("failing-1", now - timedelta(minutes=20), now - timedelta(minutes=1), retry=NO_RETRY)
    wrong_token = "wrong-" + failing.token
    monkeypatch.setenv(failing.entry["credential_ref"].removeprefix("env:"), wrong_token)
    with pytest.raises(SourceFetchError):
        billing_env.fetch("failing-1", now - timedelta(minutes=1), now, retry=NO_RETRY)

    code, text = _status(capsys)
    assert code == 1, "an enabled source over its lag budget must fail the command"
    rows = {line.split()[0]: line for line in text.splitlines() if line and not line.startswith(" ")}
    assert rows["healthy-1"].rstrip().endswith("ok")
    assert "LATE" in rows["lagging-1"]
    assert "failing" in rows["failing-1"] and "HTTP 403" in text
    assert "disabled" in rows["disabled-1"] and "LATE" not in rows["disabled-1"]
    for secret in (healthy.token, lagging.token, failing.token, wrong_token):
        assert secret not in text

    code, text = _status(capsys, "--json")
    report = json.loads(text)
    by_id = {s["source_id"]: s for s in report["sources"]}
    assert code == 1 and report["over_budget"] == ["lagging-1"]
    assert by_id["healthy-1"]["lag_s"] <= 120 and not by_id["healthy-1"]["over_budget"]
    assert by_id["lagging-1"]["lag_s"] > by_id["lagging-1"]["lag_budget_s"]
    assert by_id["failing-1"]["consecutive_failures"] == 1 and "403" in by_id["failing-1"]["last_error"]
    assert by_id["disabled-1"]["enabled"] is False and by_id["disabled-1"]["lag_s"] is None
    # lagging-1 collected its first 30 minutes only: everything after is missing, nothing before.
    closed = floor_minute(now_utc() - timedelta(seconds=30))
    assert by_id["lagging-1"]["missing_windows"] == int((closed - start) / timedelta(minutes=1)) - 30
    assert by_id["lagging-1"]["holes"] == 0
    # healthy-1 started collecting at now-20m (minus the 1-minute overlap): the hours before are holes.
    assert by_id["healthy-1"]["holes"] == 4 * 60 - 21
    for secret in (healthy.token, lagging.token, failing.token, wrong_token):
        assert secret not in text

    # Without the lagging source (and with the failing one fixed), the fleet is healthy: exit 0.
    monkeypatch.setenv(failing.entry["credential_ref"].removeprefix("env:"), failing.token)
    billing_env.fetch("failing-1", now - timedelta(minutes=1), now, retry=NO_RETRY)
    del fleet.exporters["lagging-1"]
    billing_env.write_registry()
    code, text = _status(capsys)
    assert code == 0, text
    assert "last error" not in text, "a success clears the last error"


def test_status_with_unreadable_registry_exits_2(billing_env, capsys):
    billing_env.sources_file.write_text("sources: [")
    code, text = _status(capsys)
    assert code == 2 and "not valid YAML" in text
