import dagster as dg

from billing_assets.defs.ingest.checks import ingest_checks
from billing_assets.defs.ingest.exporter_snapshots import exporter_snapshots
from billing_assets.defs.ingest.usage_samples import usage_samples

defs = dg.Definitions(assets=dg.with_source_code_references([exporter_snapshots, usage_samples]), asset_checks=ingest_checks)
