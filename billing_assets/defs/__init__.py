"""Dagster definitions, one folder per stage of the asset graph:

ingest/  exporter_snapshots -> usage_samples
usage/   usage_minute_buckets
ledger/  billing_ledger (+ checks)
ops/     sensors and schedules that keep the partitions and runs going
"""

import warnings

import dagster as dg

# BackfillPolicy is "beta" in 1.13 but is the documented way to get single-run
# ranges; the warning on every import would only bury real ones.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
