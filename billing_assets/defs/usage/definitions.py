import dagster as dg

from billing_assets.defs.usage.checks import usage_checks
from billing_assets.defs.usage.usage_minute_buckets import usage_minute_buckets

defs = dg.Definitions(assets=dg.with_source_code_references([usage_minute_buckets]), asset_checks=usage_checks)
