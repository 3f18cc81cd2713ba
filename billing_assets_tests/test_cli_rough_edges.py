"""The `billing` command's edges as an operator meets them: every error names what to fix."""

from __future__ import annotations

from datetime import timedelta

from billing_assets.cli.main import main


def _run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sync_check_loads_ca_files_and_credentials_without_the_network(billing_env, recent_hour, capsys, monkeypatch):
    billing_env.fleet.start("ok-1", billing_start=recent_hour, users=1)
    broken_ca = billing_env.fleet.start("ca-1", billing_start=recent_hour, users=1, seed=2)
    billing_env.fleet.start("tok-1", billing_start=recent_hour, users=1, seed=3)
    good_ca = broken_ca.entry["ca_bundle_ref"]
    broken_ca.entry["ca_bundle_ref"] = f"file:{billing_env.root / 'missing-ca.pem'}"
    billing_env.write_registry()
    token = billing_env.fleet.exporters["tok-1"].token
    monkeypatch.delenv("BILLING_TEST_TOKEN_TOK_1")
    code, _, err = _run(capsys, "sources", "sync", "--check")
    assert code == 2
    assert "source 'ca-1': pinned CA bundle" in err and "missing-ca.pem" in err
    assert "source 'tok-1': bearer token environment variable BILLING_TEST_TOKEN_TOK_1 is not set" in err
    assert "'ok-1'" not in err and token not in err

    broken_ca.entry["ca_bundle_ref"] = good_ca
    billing_env.write_registry()
    monkeypatch.setenv("BILLING_TEST_TOKEN_TOK_1", token)
    code, out, _ = _run(capsys, "sources", "sync", "--check")
    assert code == 0 and "registry ok: 3 sources" in out


def test_probe_reports_each_source_from_a_real_request(billing_env, recent_hour, capsys, monkeypatch):
    billing_env.fleet.start("good-1", billing_start=recent_hour, users=1)
    wrong = billing_env.fleet.start("bad-1", billing_start=recent_hour, users=1, seed=2)
    billing_env.write_registry()
    monkeypatch.setenv("BILLING_TEST_TOKEN_BAD_1", "not-the-token")
    code, out, _ = _run(capsys, "sources", "probe")
    assert code == 1
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip() and not line.startswith("\n")}
    assert "ok" in lines["good-1"] and "node 'node-good-1'" in lines["good-1"]
    assert "FAIL exporter rejected our credentials (HTTP 403)" in lines["bad-1"]
    assert wrong.token not in out and "not-the-token" not in out
    assert "2 probed, 1 failed: bad-1" in out


def test_registry_yaml_errors_give_line_and_column(tmp_path, capsys):
    broken = tmp_path / "sources.yaml"
    broken.write_text("sources:\n  - source_id: a\n    node_id: b\n   env: c\n")
    code, _, err = _run(capsys, "sources", "sync", "--check", "--file", str(broken))
    assert code == 2 and "not valid YAML: line 4, column 4" in err


def test_reconcile_errors_name_the_flag(billing_env, recent_hour, capsys):
    billing_env.fleet.start("rc-1", billing_start=recent_hour - timedelta(hours=1), users=1)
    billing_env.write_registry()
    billing_env.sync_partitions()
    code, _, err = _run(capsys, "reconcile", "--source", "rc-1", "--since", "yesterday", "--until", "2026-11-21T10:00:00Z")
    assert code == 2 and "--since 'yesterday' is not an RFC3339 time" in err
    code, _, err = _run(capsys, "reconcile", "--source", "rc-1", "--since", "2026-11-21T10:00:00", "--until", "2026-11-21T11:00:00Z")
    assert code == 2 and "--since '2026-11-21T10:00:00' has no time zone" in err
    later, earlier = recent_hour.strftime("%Y-%m-%dT%H:%M:00Z"), (recent_hour - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:00Z")
    code, _, err = _run(capsys, "reconcile", "--source", "rc-1", "--since", later, "--until", earlier)
    assert code == 2 and f"--since {later} is not before --until {earlier}" in err
    assert "examples:\n  billing reconcile --source eu-1" in _help(capsys, "reconcile")


def _help(capsys, command: str) -> str:
    import pytest

    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


def test_commands_that_need_dagster_say_so_when_dagster_home_is_unset(billing_env, recent_hour, capsys, monkeypatch):
    billing_env.fleet.start("dh-1", billing_start=recent_hour, users=1)
    billing_env.write_registry()
    monkeypatch.delenv("DAGSTER_HOME")
    code, _, err = _run(capsys, "sources", "sync")
    assert code == 2 and err.startswith("error: DAGSTER_HOME is not set") and "Traceback" not in err
    since, until = recent_hour.strftime("%Y-%m-%dT%H:%M:00Z"), (recent_hour + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:00Z")
    code, _, err = _run(capsys, "reconcile", "--source", "dh-1", "--since", since, "--until", until)
    assert code == 2 and "DAGSTER_HOME is not set" in err


def test_status_columns_stay_aligned(recent_hour):
    """`last success` used to print microseconds on some rows and push the rest of the row right."""
    from billing_assets.cli.status import render_table
    from billing_assets.reports.source_health import SourceHealth

    def report(source_id, last_success):
        return SourceHealth(
            source_id=source_id, enabled=True, mode="window", lag_budget_s=600, lag_s=30.0, collected_until=None,
            last_success=last_success, last_attempt=None, last_error=None, consecutive_failures=0,
            missing_windows=3, holes=0, first_gap=None, conflicts=0,
        )

    table = render_table(
        [report("a", "2026-12-01T08:00:00.123456Z"), report("b", "2026-12-01T08:00:00Z"), report("c", None)],
        recent_hour,
    )
    header, *rows = table.splitlines()
    missing_ends = header.index("missing") + len("missing")
    assert [row[missing_ends - 1] for row in rows] == ["3", "3", "3"], table
    assert "2026-12-01T08:00:00Z" in rows[0] and ".123456" not in rows[0]
