"""The CSV target's crash-safe protocol through real runs: a batch reserved
by a run that died (before or after writing its file) is finished by the next
run under the same name with the same bytes, and its lines never appear in a
second file; a reset re-sends as a new batch with the same tracking ids."""

from __future__ import annotations

import csv
import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import select

from billing_assets.accounts.model import load_accounts
from billing_assets.delivery.csv_files import file_name_for, render_batch, write_batch_file
from billing_assets.storage import downstream as store
from billing_assets.storage.schema import remittance_files
from billing_assets_tests.support.downstream import (
    HOUR, FakeClock, disabled_registry, first_hour, remit, remittance_rows, write_accounts, write_ledger,
)

U = ["33333333-3333-4333-8333-%012d" % i for i in range(3)]


@pytest.fixture
def csv_world(billing_env, tmp_path, monkeypatch):
    h0 = first_hour(5)
    disabled_registry(billing_env.sources_file)
    path = write_accounts(tmp_path / "accounts.yaml", {"files": {"kind": "csv", "directory": str(tmp_path / "out")}}, [
        {"account_id": f"a{i}", "subscription_key": f"sub-{i}", "targets": ["files"], "users": [{"uuid": U[i]}]} for i in range(3)
    ])
    monkeypatch.setenv("BILLING_ACCOUNTS_FILE", str(path))
    clock = FakeClock(h0 + 3 * HOUR)
    monkeypatch.setattr("billing_assets.defs.automation.clock.now", clock)
    write_ledger(billing_env.engine, [(U[i], h0 + timedelta(minutes=i), 100 * (i + 1), i + 1) for i in range(3)])
    return h0, tmp_path / "out", load_accounts(path), clock


def lines_by_file(directory):
    found = {}
    for file in sorted(directory.glob("*.csv")):
        with file.open() as handle:
            found[file.name] = [row["tracking_id"] for row in csv.DictReader(handle)]
    return found


@pytest.mark.parametrize("died", ["after reserving", "after writing the file"])
def test_a_batch_of_a_dead_run_is_finished_once_under_its_name(billing_env, csv_world, died):
    from billing_assets.pipeline.remittance import _csv_lines, plan_hours

    h0, out, accounts, clock = csv_world
    engine = billing_env.engine
    from billing_assets.pipeline.hourly import derive_hours
    from billing_assets.defs.resources import BillingStore

    derive_hours(engine, accounts, BillingStore().registry(), [h0], clock(), timedelta(minutes=10))
    plan_hours(engine, accounts, [h0], clock())
    # What a run that died did: step 1 (and maybe step 2), never step 3.
    with engine.begin() as connection:
        claimed = store.claim_due(connection, "files", clock(), "dead-run", timedelta(minutes=10), 100, None)
        content, line_of = render_batch(_csv_lines(claimed))
        name = store.reserve_batch(connection, "files", h0, claimed, file_name_for, line_of, hashlib.sha256(content).hexdigest(), clock())
    if died == "after writing the file":
        write_batch_file(accounts.targets["files"], name, _csv_lines(claimed))
    assert remit(billing_env, h0, h0).success  # the lease is still the dead run's: only the batch recovery may take them
    rows = remittance_rows(engine)
    assert len(rows) == 6 and all(r["status"] == "sent" for r in rows)
    files = lines_by_file(out)
    assert list(files) == [name], "one file, the reserved name"
    assert sorted(files[name]) == sorted(r["tracking_id"] for r in rows)
    with engine.connect() as connection:
        manifest = connection.execute(select(remittance_files)).mappings().all()
    assert {m["status"] for m in manifest} == {"written"} and len(manifest) == 6
    assert {m["sha256"] for m in manifest} == {hashlib.sha256((out / name).read_bytes()).hexdigest()}


def test_a_reset_writes_a_new_batch_with_the_same_tracking_ids_never_rewrites(billing_env, csv_world):
    from billing_assets.cli.main import main

    h0, out, accounts, clock = csv_world
    assert remit(billing_env, h0, h0).success
    first = lines_by_file(out)
    assert len(first) == 1
    original = {name: (out / name).read_bytes() for name in first}
    assert main(["remittance", "reset", "--since", h0.strftime("%Y-%m-%dT%H:%M:%SZ"), "--until", (h0 + HOUR).strftime("%Y-%m-%dT%H:%M:%SZ")]) == 0
    files = lines_by_file(out)
    assert len(files) == 2 and all((out / name).read_bytes() == data for name, data in original.items()), "never rewritten"
    (old, ids), (new, again) = sorted(files.items())
    assert new == file_name_for(h0, 2) and sorted(ids) == sorted(again)
