"""Pages a fetch validated, handed to the dedup of the same process (pipeline/parsed_pages.py).

Two roads lead to dedup's deliveries: the columns this process's fetch kept
of each page, or the kept body read back and validated again. They must give
exactly the same deliveries, or a replay in another process would bill
differently from the first run. The property holds the columns road to a
reference that walks the samples one at a time; the end-to-end tests hold
the two roads to each other on real exporter pages over HTTPS, on both
databases.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update

from billing_assets.core.dedup import DeliveredBuilder, page_columns
from billing_assets.pipeline import parsed_pages
from billing_assets.pipeline.dedup import dedup_slice, read_deliveries
from billing_assets.pipeline.fetch import fetch_slice
from billing_assets.pipeline.slices import Slice
from billing_assets.registry.model import load_registry
from billing_assets.storage.schema import exporter_pages, usage_samples
from billing_assets.transport.client import RetryPolicy
from billing_assets.transport.errors import SourceFetchError

FAST_RETRY = RetryPolicy(attempts=2, backoff_s=0.01, max_backoff_s=0.05)
EVER = (datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc))

samples = st.fixed_dictionaries({
    "uuid": st.sampled_from(["u1", "u2", "u3"]),
    "inbound_tag": st.sampled_from(["vless-in", "vmess-in"]),
    "email": st.sampled_from(["a@x", "b@x", "é@x"]),
    "uplink_bytes_total": st.integers(0, 2**63 - 1),
    "downlink_bytes_total": st.integers(0, 2**63 - 1),
})  # fmt: skip
items = st.lists(st.tuples(st.integers(0, 100), st.lists(samples, max_size=5)), max_size=6)
pages = st.lists(st.tuples(st.sampled_from(["n1", "n2"]), st.sampled_from(["prod"]), items), min_size=1, max_size=4)
intervals = st.lists(st.tuples(st.integers(0, 100), st.integers(0, 40)).map(lambda t: (t[0], t[0] + t[1])), max_size=3)


def _one_sample_at_a_time(drawn_pages, kept):
    """The reference: each sample in page order, series numbered by first delivery."""
    index, key_index, at, up, down, email = {}, [], [], [], [], []
    for node_id, env, page_items in drawn_pages:
        for at_us, page_samples in page_items:
            if not any(start <= at_us < end for start, end in kept):
                continue
            for sample in page_samples:
                key = (node_id, env, sample["uuid"], sample["inbound_tag"])
                key_index.append(index.setdefault(key, len(index)))
                at.append(at_us)
                up.append(sample["uplink_bytes_total"])
                down.append(sample["downlink_bytes_total"])
                email.append(sample["email"])
    return list(index), key_index, at, up, down, email


@settings(max_examples=300, deadline=None)
@given(drawn_pages=pages, kept=intervals)
def test_page_columns_give_the_deliveries_of_one_sample_at_a_time(drawn_pages, kept):
    builder = DeliveredBuilder()
    for node_id, env, page_items in drawn_pages:
        builder.add_page(page_columns(node_id, env, page_items), kept)
    delivered = builder.build()
    keys, key_index, at, up, down, email = _one_sample_at_a_time(drawn_pages, kept)
    assert delivered.series_keys == keys
    assert delivered.key_index.tolist() == key_index and delivered.at.tolist() == at
    assert delivered.uplink.tolist() == up and delivered.downlink.tolist() == down and delivered.email == email


@pytest.fixture
def fetched(billing_env, recent_hour):
    """One source whose 5 minutes are fetched in this process: its pages are held."""
    billing_env.fleet.start("s1", billing_start=recent_hour - timedelta(hours=1), users=6, page_limit=3)
    billing_env.write_registry()
    source = load_registry(billing_env.sources_file).get("s1")
    work = Slice("s1", recent_hour, recent_hour + timedelta(minutes=5))
    parsed_pages.clear()
    stats = fetch_slice(billing_env.engine, source, work, retry=FAST_RETRY)
    yield billing_env, source, work, stats
    parsed_pages.clear()


def _columns(delivered):
    return (delivered.series_keys, delivered.key_index.tolist(), delivered.at.tolist(), delivered.uplink.tolist(),
            delivered.downlink.tolist(), delivered.email)  # fmt: skip


def test_the_held_pages_and_the_kept_bodies_give_the_same_deliveries(fetched):
    env, _source, _work, stats = fetched
    assert stats.pages > 2 and parsed_pages.held() == (stats.pages, stats.samples), "every page of the fetch is held"
    with env.engine.connect() as connection:
        held = read_deliveries(connection, "s1", *EVER)
        assert parsed_pages.held() == (0, 0), "dedup took every held page"
        reread = read_deliveries(connection, "s1", *EVER)  # nothing held now: every kept body read back and validated
    assert len(held) == stats.samples
    assert _columns(held) == _columns(reread)


def test_only_the_first_pages_are_held_past_the_bound_and_every_sample_is_still_stored(billing_env, recent_hour, monkeypatch):
    billing_env.fleet.start("s1", billing_start=recent_hour - timedelta(hours=1), users=6, page_limit=3)
    billing_env.write_registry()
    source = load_registry(billing_env.sources_file).get("s1")
    work = Slice("s1", recent_hour, recent_hour + timedelta(minutes=5))
    monkeypatch.setattr(parsed_pages, "MAX_HELD_SAMPLES", 40)
    parsed_pages.clear()
    stats = fetch_slice(billing_env.engine, source, work, retry=FAST_RETRY)
    pages, held = parsed_pages.held()
    assert 0 < pages < stats.pages and held <= 40, "the first pages up to the bound, not the whole fetch"
    done = dedup_slice(billing_env.engine, source, work)
    with billing_env.engine.connect() as connection:
        stored = connection.execute(select(func.count()).select_from(usage_samples)).scalar_one()
    assert done.inserted == stored == stats.samples and parsed_pages.held() == (0, 0)


def test_a_long_range_holds_its_first_slices_and_a_page_nobody_took_expires(fetched, monkeypatch):
    """Slices are all fetched before the first is deduplicated: first come, first held, never evicted for a newer one."""
    env, source, work, stats = fetched
    monkeypatch.setattr(parsed_pages, "MAX_HELD_SAMPLES", stats.samples + 1)
    later = fetch_slice(env.engine, source, Slice("s1", work.end, work.end + timedelta(minutes=5)), retry=FAST_RETRY)
    assert later.samples > 1 and parsed_pages.held() == (stats.pages, stats.samples), "the first slice's pages stay"
    dedup_slice(env.engine, source, work)
    assert parsed_pages.held() == (0, 0)
    monkeypatch.setattr(parsed_pages, "HOLD_SECONDS", 0.0)
    parsed_pages.hold([("sha", parsed_pages.columns_of(_a_page()))])
    assert parsed_pages.held() == (1, 1)
    assert parsed_pages.room(0, 0) and parsed_pages.held() == (0, 0), "not taken in time: dropped"


def _a_page():
    from billing_assets.transport.envelope import WindowPage

    sample = {"uuid": "u", "email": "e", "inbound_tag": "t", "uplink_bytes_total": 1, "downlink_bytes_total": 2}
    return WindowPage.model_validate({
        "source_id": "s1", "node_id": "n", "env": "prod", "window_start": "2026-12-01T00:00:00Z",
        "window_end": "2026-12-01T00:01:00Z", "items": [{"collected_at": "2026-12-01T00:00:00Z", "samples": [sample]}],
        "has_more": False, "emitted_at": "2026-12-01T00:01:00Z",
    })  # fmt: skip


def test_a_body_damaged_in_the_store_is_billed_as_received_then_refused_on_the_next_read(fetched):
    """Held: the run bills what was received and checked. Read back later: the damage fails loudly."""
    env, source, work, stats = fetched
    with env.engine.begin() as connection:
        last = connection.execute(select(func.max(exporter_pages.c.id))).scalar_one()
        connection.execute(update(exporter_pages).where(exporter_pages.c.id == last).values(body=b"not zstd"))
    with env.engine.connect() as connection:
        assert len(read_deliveries(connection, "s1", *EVER)) == stats.samples
        with pytest.raises(SourceFetchError, match=r"source 's1': kept page of fetch [0-9a-f]{32}: page body cannot be decompressed"):
            read_deliveries(connection, "s1", *EVER)


def test_page_columns_hold_each_string_once():
    rows = [{"uuid": "u", "inbound_tag": "t", "email": "e", "uplink_bytes_total": n, "downlink_bytes_total": n} for n in range(50)]
    page = page_columns("n", "prod", [(1, rows), (2, rows)])
    assert page.keys == [("u", "t")] and page.emails == ["e"] and page.samples == 100
    assert np.array_equal(page.item_ends, [50, 100]) and page.key_of.max() == 0
