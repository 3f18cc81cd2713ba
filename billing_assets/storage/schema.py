"""Tables of the billing database; names and key columns are a read contract.

Every uniqueness rule that protects against double charging is a database
constraint here (primary keys, unique entry sequence), so it holds even when
two runs race; Python checks are only the fast path.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, LargeBinary, MetaData, String, Table, Text, UniqueConstraint

from billing_assets.storage.types import Money, UTCDateTime

metadata = MetaData()

ID = String(256)
# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL needs 64 bits at fleet scale.
SERIAL = BigInteger().with_variant(Integer, "sqlite")


def series(*, key: bool = False) -> list[Column]:
    """`node_id, env, uuid, inbound_tag`: the series a counter belongs to."""
    return [Column(name, ID, primary_key=key, nullable=False) for name in ("node_id", "env", "uuid", "inbound_tag")]


def sample_identity(*, key: bool = False) -> list[Column]:
    """A sample's identity (DESIGN.md): source, series and collection time."""
    return [
        Column("source_id", ID, primary_key=key, nullable=False),
        *series(key=key),
        Column("collected_at", UTCDateTime, primary_key=key, nullable=False),
    ]


def totals() -> list[Column]:
    return [
        Column("email", Text, nullable=False),
        Column("uplink_bytes_total", BigInteger, nullable=False),
        Column("downlink_bytes_total", BigInteger, nullable=False),
    ]

exporter_pages = Table(
    "exporter_pages",
    metadata,
    Column("id", SERIAL, primary_key=True, autoincrement=True),
    Column("source_id", ID, nullable=False),
    Column("fetch_since", UTCDateTime, nullable=False),
    Column("fetch_until", UTCDateTime, nullable=False),
    Column("page_no", Integer, nullable=False),
    Column("item_count", Integer, nullable=False),
    Column("sample_count", Integer, nullable=False),
    Column("body_bytes", BigInteger, nullable=False),
    Column("emitted_at", UTCDateTime, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("run_id", String(64)),
    # Pages kept as received (migration 0012): the body exactly as the exporter sent it,
    # compressed (`body_encoding`), its sha256, and the request: the window above plus
    # the cursor sent (NULL for a first page). `fetch_id` groups one fetch's pages.
    # Pages from before 0012 have no body; their samples are in `exporter_snapshot_rows`.
    Column("fetch_id", String(32)),
    Column("request_cursor", Text),
    Column("body_sha256", String(64)),
    Column("body_encoding", String(16)),
    Column("body", LargeBinary),
    Index("ix_exporter_pages_source_window", "source_id", "fetch_since"),
    Index("ix_exporter_pages_source_until", "source_id", "fetch_until"),
)

exporter_snapshot_rows = Table(
    "exporter_snapshot_rows",
    metadata,
    *sample_identity(),
    *totals(),
    Column("delivery_seq", BigInteger, nullable=False),
    Column("fetched_at", UTCDateTime, nullable=False),
    Index("ix_exporter_snapshot_rows_source_time", "source_id", "collected_at"),
)

# The series dictionary (issue 14, migration 0011): one integer per
# (source_id, node_id, env, uuid, inbound_tag), one row per series, not per
# sample. Samples are keyed by (series_id, collected_at) instead of six
# varchar columns, so their primary key index, the dedup insert and the
# bucket step's per-series sort work on 16 bytes a row instead of ~100.
# Rows are never deleted or renumbered (pruning keeps a baseline sample of
# every series), so an id means the same series for as long as it is stored.
usage_series = Table(
    "usage_series",
    metadata,
    Column("series_id", Integer, primary_key=True, autoincrement=True),
    Column("source_id", ID, nullable=False),
    *series(),
    UniqueConstraint("source_id", "node_id", "env", "uuid", "inbound_tag", name="uq_usage_series_identity"),
)

# The deduplicated samples as stored: the first delivery of each sample
# identity, which is exactly one row per (series_id, collected_at). A source's
# time range is read as one primary-key range per series of the source, the
# series named by the dictionary (storage/source_series.py); the row has no
# `source_id` and no second index, which cost ~0.45 s of server CPU per
# source-hour taken in (migration 0013, bench/RESULTS.md round 12). No foreign
# key to usage_series: dedup, the one writer, takes the ids from the
# dictionary in the same transaction, and a foreign key would add a trigger
# and an index probe per inserted sample. Other services read the contract
# columns, `source_id` included, through the `usage_samples` view.
usage_sample_rows = Table(
    "usage_sample_rows",
    metadata,
    Column("series_id", Integer, primary_key=True, autoincrement=False),
    Column("collected_at", UTCDateTime, primary_key=True),
    *totals(),
    Column("ingested_at", UTCDateTime, nullable=False),
)

# Dual-read only: what /v1/snapshots/latest returned, kept to compare with the
# window API's usage_samples. Nothing reads it for billing.
legacy_snapshot_samples = Table(
    "legacy_snapshot_samples",
    metadata,
    *sample_identity(key=True),
    *totals(),
    Column("pulled_at", UTCDateTime, nullable=False),
    Index("ix_legacy_snapshot_samples_source_time", "source_id", "collected_at"),
)

sample_conflicts = Table(
    "sample_conflicts",
    metadata,
    Column("id", SERIAL, primary_key=True, autoincrement=True),
    *sample_identity(),
    Column("window_start", UTCDateTime, nullable=False),
    Column("kept_uplink_bytes_total", BigInteger, nullable=False),
    Column("kept_downlink_bytes_total", BigInteger, nullable=False),
    Column("rejected_uplink_bytes_total", BigInteger, nullable=False),
    Column("rejected_downlink_bytes_total", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("detected_at", UTCDateTime, nullable=False),
    UniqueConstraint(
        "source_id", "node_id", "env", "uuid", "inbound_tag", "collected_at",
        "rejected_uplink_bytes_total", "rejected_downlink_bytes_total",
        name="uq_sample_conflicts_delivery",
    ),
    Index("ix_sample_conflicts_source_time", "source_id", "collected_at"),
)

# Deltas held back by the per-source plausibility bound (bytes per second per
# series): a counter that jumps by more than any link could carry is a broken or
# hostile exporter, not usage. Rows of the current derivation are replaced with
# the window's buckets; a released row (operator, with who and why) is billed.
usage_quarantine = Table(
    "usage_quarantine",
    metadata,
    Column("id", SERIAL, primary_key=True, autoincrement=True),
    *sample_identity(),
    Column("held_uplink_bytes", BigInteger, nullable=False),
    Column("held_downlink_bytes", BigInteger, nullable=False),
    Column("elapsed_us", BigInteger),
    Column("bound_bytes", BigInteger, nullable=False),
    Column("detected_at", UTCDateTime, nullable=False),
    Column("released_at", UTCDateTime),
    Column("released_by", Text),
    Column("release_reason", Text),
    UniqueConstraint(
        "source_id", "node_id", "env", "uuid", "inbound_tag", "collected_at",
        "held_uplink_bytes", "held_downlink_bytes",
        name="uq_usage_quarantine_hold",
    ),
    Index("ix_usage_quarantine_source_time", "source_id", "collected_at"),
)

usage_minute_buckets = Table(
    "usage_minute_buckets",
    metadata,
    *series(key=True),
    Column("bucket_start", UTCDateTime, primary_key=True),
    Column("source_id", ID, nullable=False),
    Column("email", Text, nullable=False),
    Column("uplink_bytes", BigInteger, nullable=False),
    Column("downlink_bytes", BigInteger, nullable=False),
    Column("sample_count", Integer, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_usage_minute_buckets_source_time", "source_id", "bucket_start"),
)

billing_ledger = Table(
    "billing_ledger",
    metadata,
    Column("id", SERIAL, primary_key=True, autoincrement=True),
    *series(),
    Column("bucket_start", UTCDateTime, nullable=False),
    Column("entry_seq", Integer, nullable=False),
    Column("source_id", ID, nullable=False),
    Column("email", Text, nullable=False),
    Column("uplink_bytes", BigInteger, nullable=False),
    Column("downlink_bytes", BigInteger, nullable=False),
    Column("amount", Money, nullable=False),
    Column("amount_nanos", BigInteger, nullable=False),
    Column("currency", String(8), nullable=False),
    Column("plan", String(64), nullable=False),
    Column("entry_kind", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("run_id", String(64)),
    UniqueConstraint("node_id", "env", "uuid", "inbound_tag", "bucket_start", "entry_seq", name="uq_billing_ledger_entry"),
    Index("ix_billing_ledger_source_time", "source_id", "bucket_start"),
)

source_checkpoints = Table(
    "source_checkpoints",
    metadata,
    Column("source_id", ID, primary_key=True),
    Column("last_successful_until", UTCDateTime),
    Column("last_cursor", Text),
    Column("last_attempted_at", UTCDateTime),
    Column("last_succeeded_at", UTCDateTime),
    Column("last_error", Text),
    Column("consecutive_failures", Integer, nullable=False, default=0),
)

# The read contract `usage_samples` (DESIGN.md): a view over the stored rows
# and the series dictionary, with the same columns, in the same order, as the
# table it replaced (migration 0011). Described in its own MetaData so that
# queries can use it like a table while the model-vs-migration comparison,
# which reflects tables only, does not expect a table of that name. It is
# not writable: dedup (storage/samples.py) is the one writer of samples.
views = MetaData()

USAGE_SAMPLES_VIEW_SQL = """
    SELECT s.source_id, s.node_id, s.env, s.uuid, s.inbound_tag, r.collected_at, r.email,
           r.uplink_bytes_total, r.downlink_bytes_total, r.ingested_at
    FROM usage_sample_rows r
    JOIN usage_series s ON s.series_id = r.series_id
"""

usage_samples = Table(
    "usage_samples",
    views,
    *sample_identity(key=True),
    *totals(),
    Column("ingested_at", UTCDateTime, nullable=False),
)



# --- Downstream: hourly usage and remittance (migration 0010) ----------------
# What leaves the system, and the proof of it. Every rule that stops a double
# send is a constraint: one row per (target, account, metric, hour, revision)
# and one tracking id per target, so two racing planners cannot both insert.

# Which hours gained ledger entries since the remittance sensor last looked;
# (created_at, bucket_start) makes it an index-only range scan of new entries.
Index("ix_billing_ledger_created", billing_ledger.c.created_at, billing_ledger.c.bucket_start)

METRIC = String(32)

hourly_usage = Table(
    "hourly_usage",
    metadata,
    Column("account_id", ID, primary_key=True),
    Column("metric", METRIC, primary_key=True),
    Column("hour", UTCDateTime, primary_key=True),
    Column("quantity", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_hourly_usage_hour", "hour"),
)

# Usage of users no account paid for at that minute: kept and shown, never
# remitted; re-derived with the hour, so a later membership picks it up.
unassigned_usage = Table(
    "unassigned_usage",
    metadata,
    Column("uuid", ID, primary_key=True),
    Column("metric", METRIC, primary_key=True),
    Column("hour", UTCDateTime, primary_key=True),
    Column("quantity", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_unassigned_usage_hour", "hour"),
)

hour_completeness = Table(
    "hour_completeness",
    metadata,
    Column("hour", UTCDateTime, primary_key=True),
    Column("complete", Boolean, nullable=False),
    Column("forced", Boolean, nullable=False),
    Column("forced_by", Text),
    Column("reason", Text),
    Column("detail", Text, nullable=False),
    Column("evaluated_at", UTCDateTime, nullable=False),
    Column("derived_at", UTCDateTime),
    Column("remitted_at", UTCDateTime),
)

remittances = Table(
    "remittances",
    metadata,
    Column("id", SERIAL, primary_key=True, autoincrement=True),
    Column("target", ID, nullable=False),
    Column("account_id", ID, nullable=False),
    Column("subscription_key", Text, nullable=False),
    Column("metric", METRIC, nullable=False),
    Column("hour", UTCDateTime, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("quantity", BigInteger, nullable=False),
    Column("tracking_id", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime),
    Column("last_error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime),
    Column("claimed_by", String(64)),
    Column("claimed_until", UTCDateTime),
    UniqueConstraint("target", "account_id", "metric", "hour", "revision", name="uq_remittances_key"),
    UniqueConstraint("target", "tracking_id", name="uq_remittances_tracking_id"),
    # Claims walk pending rows of a target in hour order; the sensor looks for due retries of any target.
    Index("ix_remittances_claim", "target", "status", "hour", "revision", "id"),
    Index("ix_remittances_retry", "status", "next_attempt_at"),
    Index("ix_remittances_hour", "hour"),
)

remittance_attempts = Table(
    "remittance_attempts",
    metadata,
    Column("id", SERIAL, primary_key=True, autoincrement=True),
    Column("remittance_id", BigInteger, nullable=False),
    Column("attempted_at", UTCDateTime, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("http_status", Integer),
    Column("detail", Text),
    Column("run_id", String(64)),
    Index("ix_remittance_attempts_remittance", "remittance_id"),
)

remittance_files = Table(
    "remittance_files",
    metadata,
    Column("id", SERIAL, primary_key=True, autoincrement=True),
    Column("target", ID, nullable=False),
    Column("file_name", String(255), nullable=False),
    Column("line", Integer, nullable=False),
    Column("sha256", String(64)),
    Column("remittance_id", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("written_at", UTCDateTime),
    UniqueConstraint("target", "file_name", "line", name="uq_remittance_files_line"),
    Index("ix_remittance_files_remittance", "remittance_id"),
)

# What each plan step has accounted for per (target, account, metric, hour),
# and the signed balance carried between hours (negative: credit; positive:
# usage a one-record-per-hour target could not take in its own hour).
remittance_plan = Table(
    "remittance_plan",
    metadata,
    Column("target", ID, primary_key=True),
    Column("account_id", ID, primary_key=True),
    Column("metric", METRIC, primary_key=True),
    Column("hour", UTCDateTime, primary_key=True),
    Column("accounted", BigInteger, nullable=False),
    Column("planned_at", UTCDateTime, nullable=False),
    Index("ix_remittance_plan_hour", "hour"),
)

remittance_carry = Table(
    "remittance_carry",
    metadata,
    Column("target", ID, primary_key=True),
    Column("account_id", ID, primary_key=True),
    Column("metric", METRIC, primary_key=True),
    Column("carried", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
