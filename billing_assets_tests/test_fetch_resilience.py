"""Fetch under transient and permanent upstream failures.

Transient trouble (503s, slow answers) is retried with backoff and ends in
the same data as a clean fetch; a broken page anywhere in the window fails the
whole slice with a message naming the source and leaves nothing staged.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from billing_assets.exporter import Faults
from billing_assets.pipeline.dedup import read_deliveries
from billing_assets.pipeline.fetch import fetch_slice
from billing_assets.pipeline.slices import Slice
from billing_assets.registry.model import load_registry
from billing_assets.storage.checkpoints import read_checkpoint
from billing_assets.transport.client import RetryPolicy
from billing_assets.transport.errors import SourceFetchError

FAST_RETRY = RetryPolicy(attempts=4, backoff_s=0.01, max_backoff_s=0.05)


def _checkpoint(engine, source_id):
    with engine.connect() as connection:
        return read_checkpoint(connection, source_id)


def _staged(engine, source_id):
    """How many deliveries dedup would read for the source (the kept pages of the newest fetch)."""
    with engine.connect() as connection:
        return len(read_deliveries(connection, source_id, datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc)))


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


def test_each_page_is_kept_as_received_with_its_sha256_and_request(one_source):
    """What was received stays provable: the body, its sha256, the cursor sent, the window asked for."""
    import hashlib
    import json

    from billing_assets.storage.page_bodies import received
    from billing_assets.storage.schema import exporter_pages as pages

    env, _exporter, source, work = one_source
    stats = fetch_slice(env.engine, source, work, retry=FAST_RETRY)
    with env.engine.connect() as connection:
        rows = connection.execute(select(pages).where(pages.c.source_id == "s1").order_by(pages.c.page_no)).mappings().all()
    assert len(rows) == stats.pages > 3 and len({row["fetch_id"] for row in rows}) == 1
    sent_cursor = None
    for row in rows:
        body = received(bytes(row["body"]), row["body_encoding"])
        assert hashlib.sha256(body).hexdigest() == row["body_sha256"] and len(body) == row["body_bytes"]
        page = json.loads(body)
        assert row["request_cursor"] == sent_cursor, "the cursor sent for a page is the previous page's next_cursor"
        assert (row["fetch_since"], row["fetch_until"]) == (work.start - source.overlap, work.end)
        assert page["source_id"] == "s1" and sum(len(item["samples"]) for item in page["items"]) == row["sample_count"]
        sent_cursor = page["next_cursor"]
    assert sent_cursor is None
    with pytest.raises(ValueError, match="sha256"):
        received(bytes(rows[0]["body"]), rows[0]["body_encoding"], "0" * 64)


def test_a_damaged_kept_page_fails_dedup_naming_the_source_and_writes_nothing(one_source):
    from sqlalchemy import func, update

    from billing_assets.pipeline.dedup import dedup_slice
    from billing_assets.storage.schema import exporter_pages as pages
    from billing_assets.storage.schema import usage_samples

    env, _exporter, source, work = one_source
    fetch_slice(env.engine, source, work, retry=FAST_RETRY)
    with env.engine.begin() as connection:
        last = connection.execute(select(func.max(pages.c.id))).scalar_one()
        connection.execute(update(pages).where(pages.c.id == last).values(body_sha256="0" * 64))
    with pytest.raises(SourceFetchError, match=r"source 's1': kept page of fetch [0-9a-f]{32}: page body does not match its recorded sha256"):
        dedup_slice(env.engine, source, work)
    with env.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(usage_samples)).scalar_one() == 0, "nothing partial"
