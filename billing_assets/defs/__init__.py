"""Dagster definitions, one folder per stage of the asset graph:

ingest/      exporter_snapshots -> usage_samples (+ conflict check)
usage/       usage_minute_buckets (+ plausibility check)
ledger/      billing_ledger (+ ledger check)
health/      source_health (freshness and completeness checks)
automation/  sensors and schedules that keep the partitions and runs going

Shared: partitions.py (the partition space), runs.py (run tags, range
requests), resources.py, run_context.py (what every billing asset does around
its step), table_contracts.py, dagster_internals.py (the one private-API use).
"""

import warnings

import dagster as dg

# BackfillPolicy is "beta" in 1.13 but is the documented way to get single-run
# ranges; the warning on every import would only bury real ones.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
