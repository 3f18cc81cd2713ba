"""Per-source totals from the billing database, for the demo's closing table."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine

from billing_assets.core.pricing import nanos_to_amount
from billing_assets.core.units import human_bytes  # noqa: F401 - the demo's table reads it from here
from billing_assets.storage.source_series import in_source, with_series
from billing_assets.storage.sql import typed

_TOTALS = """
    SELECT
      (SELECT COUNT(*) FROM usage_sample_rows WHERE {samples_of_source} AND collected_at >= :start AND collected_at < :end),
      (SELECT COUNT(*) FROM usage_minute_buckets WHERE source_id = :s AND bucket_start >= :start AND bucket_start < :end),
      (SELECT COALESCE(SUM(uplink_bytes + downlink_bytes), 0) FROM usage_minute_buckets
         WHERE source_id = :s AND bucket_start >= :start AND bucket_start < :end),
      (SELECT COUNT(*) FROM billing_ledger WHERE source_id = :s AND bucket_start >= :start AND bucket_start < :end),
      (SELECT COALESCE(SUM(amount_nanos), 0) FROM billing_ledger
         WHERE source_id = :s AND bucket_start >= :start AND bucket_start < :end)
    """


def source_totals(engine: Engine, source_id: str, start: datetime, end: datetime) -> dict:
    with engine.connect() as connection:
        statement = typed(_TOTALS.format(samples_of_source=in_source(connection, param="s")), {"start": "ts", "end": "ts"})
        samples, buckets, total_bytes, entries, nanos = connection.execute(
            statement, with_series(connection, {"s": source_id, "start": start, "end": end}, param="s")
        ).one()
    return {
        "samples": int(samples),
        "buckets": int(buckets),
        "bytes": int(total_bytes),
        "ledger_entries": int(entries),
        "amount": nanos_to_amount(int(nanos)),
    }
