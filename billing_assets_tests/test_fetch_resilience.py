"""Fetch under transient and permanent upstream failures.

Transient trouble (503s, slow answers) is retried with backoff and ends in
the same data as a clean fetch; a broken page anywhere in the window fails the
whole slice with a message naming the source and leaves nothing staged.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from billing_assets.exporter import Faults
from billing_assets.pipeline.fetch import fetch_slice
from billing_assets.pipeline.slices import Slice
from billing_assets.registry.model import load_registry
from billing_assets.storage.checkpoints import read_checkpoint
from billing_assets.storage.schema import exporter_snapshot_rows
from billing_assets.transport.client import RetryPolicy
from billing_assets.transport.errors import SourceFetchError

FAST_RETRY = RetryPolicy(attempts=4, backoff_s=0.01, max_backoff_s=0.05)


def _checkpoint(engine, source_id):
    with engine.connect() as connection:
        return read_checkpoint(connection, source_id)


def _staged(engine, source_id):
    with engine.connect() as connection:
        return connection.execute(
            select(func.count()).select_from(exporter_snapshot_rows).where(exporter_snapshot_rows.c.source_id == source_id)
        ).scalar_one()


@pytest.fixture
def one_source(billing_env, recent_hour):
    exporter = billing_env.fleet.start("s1", billing_start=recent_hour, users=4, page_limit=2, request_timeout="1s")
    billing_env.write_registry()
    source = load_registry(billing_env.sources_file).get("s1")
    return billing_env, exporter, source, Slice("s1", recent_hour, recent_hour + timedelta(minutes=5))


def test_transient_503s_are_retried_to_the_same_result(one_source):
    env, exporter, source, work = one_source
    clean = fetch_slice(env.engine, source, work, retry=FAST_RETRY)
    exporter.server.faults = Faults(fail_first_n=3)
    retried = fetch_slice(env.engine, source, work, retry=FAST_RETRY)
    assert retried.pages == clean.pages > 3 and retried.samples == clean.samples
    assert _staged(env.engine, "s1") == clean.samples


def test_persistent_503_fails_the_slice_with_a_clear_error_and_keeps_previous_staging(one_source):
    env, exporter, source, work = one_source
    fetch_slice(env.engine, source, work, retry=FAST_RETRY)
    before = _staged(env.engine, "s1")
    exporter.server.faults = Faults(down=True)
    with pytest.raises(SourceFetchError, match=r"source 's1': exporter answered HTTP 503 \(gave up after 4 attempts\)"):
        fetch_slice(env.engine, source, work, retry=FAST_RETRY)
    assert _staged(env.engine, "s1") == before, "a failed re-fetch must not lose what was staged"
    checkpoint = _checkpoint(env.engine, "s1")
    assert "HTTP 503" in checkpoint["last_error"] and checkpoint["last_successful_until"] == work.end


def test_slow_exporter_times_out_and_is_reported(one_source):
    env, exporter, source, work = one_source
    exporter.server.faults = Faults(delay_s=1.5)
    with pytest.raises(SourceFetchError, match=r"source 's1': timed out after 1s"):
        fetch_slice(env.engine, source, work, retry=RetryPolicy(attempts=2, backoff_s=0.01))
    assert _staged(env.engine, "s1") == 0


@pytest.mark.parametrize(
    "faults, message",
    [
        (Faults(malformed_json=True), "malformed JSON"),
        (Faults(schema_violation=True), "schema violation"),
        (Faults(wrong_node_id_on_page=2), "page 2: node_id 'node-s1-imposter' does not match"),
    ],
)
def test_a_bad_page_anywhere_writes_nothing(one_source, faults, message):
    env, exporter, source, work = one_source
    exporter.server.faults = faults
    with pytest.raises(SourceFetchError, match=message):
        fetch_slice(env.engine, source, work, retry=FAST_RETRY)
    assert _staged(env.engine, "s1") == 0
    assert _checkpoint(env.engine, "s1")["last_successful_until"] is None
