"""What the exporter delivered, exactly as received (fetch's output, dedup's input).

Window fetches keep each page body as received (compressed, with its sha256
and the request), one `exporter_pages` row per page (migration 0012): dedup
parses the bodies it needs, so no per-sample row is written and read back.
`legacy_latest` pulls, and fetches from before 0012, are staged as rows in
`exporter_snapshot_rows`; dedup reads those for every instant no kept page
covers (`core.claims`). Duplicates and conflicts are kept in both on purpose:
deciding what to bill is dedup's job, and it needs to see them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime

from sqlalchemy import Connection, select

from billing_assets.core.claims import Fetch, Interval
from billing_assets.storage.bulk import bulk_insert
from billing_assets.storage.page_bodies import received
from billing_assets.storage.schema import exporter_pages, exporter_snapshot_rows
from billing_assets.storage.sql import typed
from billing_assets.storage.times import micros_column, time_select

STAGED_COLUMNS = (
    "source_id",
    "node_id",
    "env",
    "uuid",
    "inbound_tag",
    "collected_at",
    "email",
    "uplink_bytes_total",
    "downlink_bytes_total",
    "delivery_seq",
    "fetched_at",
)


def stage_rows(connection: Connection, rows: Iterable[tuple]) -> int:
    """Append tuples in `STAGED_COLUMNS` order; times already via `times.time_param`."""
    return bulk_insert(connection, exporter_snapshot_rows.name, STAGED_COLUMNS, rows)


def record_page(connection: Connection, **values) -> None:
    connection.execute(exporter_pages.insert(), [values])


_KEPT_FETCHES = typed(
    """
    SELECT fetch_id, MIN(fetch_since) AS fetch_since, MAX(fetch_until) AS fetch_until, MAX(id) AS last_id
    FROM exporter_pages
    WHERE source_id = :source_id AND fetch_until > :since AND fetch_since < :until AND body IS NOT NULL
    GROUP BY fetch_id
    """,
    {"since": "ts", "until": "ts"},
    {"fetch_id": "str", "fetch_since": "ts", "fetch_until": "ts", "last_id": "int"},
)


def kept_fetches(connection: Connection, source_id: str, since: datetime, until: datetime) -> list[Fetch]:
    """The fetches with kept pages that reach into [since, until), newest last page as their order."""
    rows = connection.execute(_KEPT_FETCHES, {"source_id": source_id, "since": since, "until": until})
    return [Fetch(fetch_id, fetch_since, fetch_until, int(last_id)) for fetch_id, fetch_since, fetch_until, last_id in rows]


def kept_pages(connection: Connection, source_id: str, fetch: Fetch) -> list[tuple[int, str | None]]:
    """One fetch's kept pages as (id, sha256 of the body as received), in page order.

    The fetch's window start narrows the lookup to one (source_id, fetch_since)
    index range and one day partition, not every page the source kept.
    """
    table = exporter_pages
    rows = connection.execute(
        select(table.c.id, table.c.body_sha256).where(*_of_fetch(source_id, fetch)).order_by(table.c.page_no)
    )
    return [(int(page_id), sha256) for page_id, sha256 in rows]


def kept_body(connection: Connection, source_id: str, fetch: Fetch, page_id: int) -> bytes:
    """One kept page's body as received, checked against its sha256 (ValueError if it is not that body).

    One page at a time, so memory is one body, as it was when downloading.
    """
    table = exporter_pages
    data, encoding, sha256 = connection.execute(
        select(table.c.body, table.c.body_encoding, table.c.body_sha256).where(*_of_fetch(source_id, fetch), table.c.id == page_id)
    ).one()
    return received(bytes(data), encoding, sha256)


def _of_fetch(source_id: str, fetch: Fetch) -> tuple:
    table = exporter_pages
    return (table.c.source_id == source_id, table.c.fetch_since == fetch.since, table.c.fetch_id == fetch.fetch_id)


def staged_deliveries(connection: Connection, source_id: str, intervals: list[Interval]) -> Iterator[tuple]:
    """Staged rows of these intervals in delivery order, as
    (node_id, env, uuid, inbound_tag, collected_at µs, email, uplink, downlink)."""
    statement = typed(
        f"""
        SELECT node_id, env, uuid, inbound_tag, {time_select(connection, 'collected_at')}, email,
               uplink_bytes_total, downlink_bytes_total
        FROM exporter_snapshot_rows
        WHERE source_id = :source_id AND collected_at >= :since AND collected_at < :until
        ORDER BY delivery_seq
        """,
        {"since": "ts", "until": "ts"},
    )
    for since, until in intervals:
        result = connection.execute(statement, {"source_id": source_id, "since": since, "until": until})
        rows = result.cursor.fetchall() if result.cursor is not None else []
        result.close()
        if not rows:
            continue
        at = micros_column(connection, [row[4] for row in rows]).tolist()
        for row, at_us in zip(rows, at):
            yield (*row[:4], at_us, *row[5:])
