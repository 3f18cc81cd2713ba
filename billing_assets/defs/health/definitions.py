import dagster as dg

from billing_assets.defs.health.source_health import health_job, health_schedule, source_health

defs = dg.Definitions(assets=dg.with_source_code_references([source_health]), jobs=[health_job], schedules=[health_schedule])
