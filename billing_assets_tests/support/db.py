"""Reading billing tables back in tests, as plain Python values."""

from __future__ import annotations

from sqlalchemy import select

from billing_assets.storage.schema import billing_ledger, usage_minute_buckets


def buckets_by_key(engine, source_id: str | None = None, with_counts: bool = False) -> dict[tuple, tuple[int, ...]]:
    """{bucket key: (uplink, downlink)} or, `with_counts`, (uplink, downlink, sample_count)."""
    query = select(usage_minute_buckets)
    if source_id:
        query = query.where(usage_minute_buckets.c.source_id == source_id)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return {
        (r["node_id"], r["env"], r["uuid"], r["inbound_tag"], r["bucket_start"]):
            (r["uplink_bytes"], r["downlink_bytes"], *((r["sample_count"],) if with_counts else ()))
        for r in rows
    }


def nonzero(buckets: dict) -> dict:
    return {key: value for key, value in buckets.items() if value != (0, 0)}


def ledger_rows(engine, source_id: str | None = None) -> list[dict]:
    query = select(billing_ledger).order_by(billing_ledger.c.id)
    if source_id:
        query = query.where(billing_ledger.c.source_id == source_id)
    with engine.connect() as connection:
        return [dict(row) for row in connection.execute(query).mappings()]


def ledger_sums(engine, source_id: str | None = None) -> dict[tuple, tuple[int, int]]:
    sums: dict[tuple, list[int]] = {}
    for row in ledger_rows(engine, source_id):
        key = (row["node_id"], row["env"], row["uuid"], row["inbound_tag"], row["bucket_start"])
        total = sums.setdefault(key, [0, 0])
        total[0] += row["uplink_bytes"]
        total[1] += row["downlink_bytes"]
    return {key: (v[0], v[1]) for key, v in sums.items()}


def insert_samples(connection, rows: list[dict]) -> None:
    """Store samples given by their contract columns (as `usage_samples` reads them), as dedup stores them.

    `usage_samples` is a view (migration 0011); a sample is stored as a row of
    `usage_sample_rows` keyed by its series' id in `usage_series`.
    """
    from sqlalchemy import tuple_

    from billing_assets.storage.schema import usage_sample_rows, usage_series

    if not rows:
        return
    names = ("source_id", "node_id", "env", "uuid", "inbound_tag")
    wanted = {tuple(row[name] for name in names) for row in rows}
    columns = [usage_series.c[name] for name in names]

    def known() -> dict[tuple, int]:
        found = connection.execute(select(usage_series.c.series_id, *columns).where(tuple_(*columns).in_(list(wanted))))
        return {tuple(found_row[1:]): found_row[0] for found_row in found}

    missing = wanted - set(known())
    if missing:
        connection.execute(usage_series.insert(), [dict(zip(names, key)) for key in sorted(missing)])
    ids = known()
    stored = [c.name for c in usage_sample_rows.columns if c.name not in ("series_id",)]
    connection.execute(usage_sample_rows.insert(), [
        dict({name: row[name] for name in stored}, series_id=ids[tuple(row[name] for name in names)]) for row in rows
    ])  # fmt: skip
