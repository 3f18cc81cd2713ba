import dagster as dg

from billing_assets.defs.ops.sources_sensor import exporter_sources_sensor

defs = dg.Definitions(sensors=[exporter_sources_sensor])
