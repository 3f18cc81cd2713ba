"""The benchmark's quick preset still runs end to end (figures are not asserted:
no timing assertions in tests), and what it measures is the real pipeline:
every sample the transport baseline downloads ends up deduplicated in the
database, and the ledger was written."""

from __future__ import annotations

import json

from bench.run import main


def test_quick_preset_runs_and_pipeline_stores_what_baseline_downloads(tmp_path):
    report_file = tmp_path / "report.json"
    assert main(["--preset", "quick", "--workdir", str(tmp_path / "work"), "--json", str(report_file)]) == 0
    report = json.loads(report_file.read_text())
    baseline = report["baseline"]
    sqlite = report["databases"]["sqlite"]
    assert baseline["samples"] > 1000
    assert sqlite["samples"] == baseline["samples"]
    assert sqlite["rows"]["samples_received"] == baseline["samples"]
    assert sqlite["rows"]["billing_ledger"] > 0
    assert set(sqlite["stages_s"]) >= {"fetch", "dedup", "bucket", "ledger"}
    assert sqlite["peak_rss_mib"] > 0
