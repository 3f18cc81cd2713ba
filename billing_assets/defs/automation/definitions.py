"""Sensors, schedules and the jobs they request that are not asset jobs of one domain.

`legacy_pull_job` (one /v1/snapshots/latest pull) and `legacy_billing_job` (the
four billing assets over a range) are what `legacy_latest_sensor` requests;
`prune_job` is what `prune_schedule` runs.
"""

import dagster as dg

from billing_assets.defs.automation.collection_sensor import collection_sensor
from billing_assets.defs.automation.legacy_pull import legacy_pull_job
from billing_assets.defs.automation.legacy_sensor import legacy_billing_job, legacy_latest_sensor
from billing_assets.defs.automation.partition_status_sensor import partition_status_sensor
from billing_assets.defs.automation.pruning import prune_job, prune_schedule
from billing_assets.defs.automation.reconcile import reconcile_schedule
from billing_assets.defs.automation.sources_sensor import exporter_sources_sensor

defs = dg.Definitions(
    sensors=[exporter_sources_sensor, collection_sensor, legacy_latest_sensor, partition_status_sensor],
    schedules=[reconcile_schedule, prune_schedule],
    jobs=[prune_job, legacy_pull_job, legacy_billing_job],
)
