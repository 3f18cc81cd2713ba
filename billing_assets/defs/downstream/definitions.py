import dagster as dg

from billing_assets.defs.downstream.checks import downstream_checks
from billing_assets.defs.downstream.hourly_usage import hourly_usage
from billing_assets.defs.downstream.remittance import remittance
from billing_assets.defs.downstream.sensor import remittance_sensor

defs = dg.Definitions(assets=dg.with_source_code_references([hourly_usage, remittance]), asset_checks=downstream_checks, sensors=[remittance_sensor])
