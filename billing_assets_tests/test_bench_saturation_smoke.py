"""The saturation curve (bench.saturation) runs end to end on its smallest shape: one
fleet, one and two runs at a time, on a real PostgreSQL. Figures are not asserted
(no timing assertions in tests); the table has its points, every point stored what
the transport baseline downloaded, and each point's CPU shares are real (> 0) and
add up to no more than the machine (<= 100 %)."""

from __future__ import annotations

import json

import pytest

from bench.saturation import main

pytestmark = pytest.mark.postgres


def test_smallest_curve_has_its_points_and_cpu_shares(tmp_path):
    from billing_assets.devtools.postgres import pg_binaries_available

    if not pg_binaries_available():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, postgres) are not on PATH")
    report_file = tmp_path / "saturation.json"
    argv = ["--sources", "2", "--users", "10", "--minutes", "3", "--concurrency", "1", "2"]
    assert main([*argv, "--workdir", str(tmp_path / "work"), "--json", str(report_file)]) == 0
    report = json.loads(report_file.read_text())

    (fleet,) = report["fleets"]
    assert [point["concurrency"] for point in fleet["points"]] == [1, 2]
    for point in fleet["points"]:
        assert point["samples"] > 0 and point["samples_per_s"] > 0 and point["ratio_to_baseline"] > 0
        shares = point["share_pct"]
        assert shares["postgres"] > 0 and shares["workers"] > 0
        assert 0 < shares["postgres"] + shares["workers"] + shares["exporters"] <= 100
        assert shares["postgres"] + shares["workers"] + shares["exporters"] + shares["other"] <= 100 + 1e-6
        assert point["stages_s"].keys() >= {"fetch", "dedup", "bucket", "ledger"}
    assert len(fleet["points"][0]["stages_s"]) and fleet["points"][0]["samples"] == fleet["points"][1]["samples"]
    rows = report["table"].splitlines()
    assert len(rows) == 2 + 2 and all(row.startswith("| 2 x 10 users") for row in rows[2:])
