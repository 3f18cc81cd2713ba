import dagster as dg

from billing_assets.defs.downstream.checks import downstream_checks
from billing_assets.defs.downstream.hourly_usage import hourly_usage
from billing_assets.defs.downstream.remittance import remittance

defs = dg.Definitions(assets=[hourly_usage, remittance], asset_checks=downstream_checks)
