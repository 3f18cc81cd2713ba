import dagster as dg

from billing_assets.defs.health.checks import health_check_job, health_checks, health_schedule

defs = dg.Definitions(asset_checks=health_checks, jobs=[health_check_job], schedules=[health_schedule])
