"""The code location: every domain's definitions merged, plus shared pieces.

Steps run in-process: the four billing steps of a run are a strict chain that
waits on the network and the database, so separate step processes would only
add start-up time per run. Domain modules are imported as modules (not their
`defs` objects) because Dagster refuses several Definitions at module scope.
"""

import dagster as dg

from billing_assets.defs import event_volume
from billing_assets.defs.downstream import definitions as downstream
from billing_assets.defs.health import definitions as health
from billing_assets.defs.ingest import definitions as ingest
from billing_assets.defs.ledger import definitions as ledger
from billing_assets.defs.automation import definitions as ops
from billing_assets.defs.resources import BillingStore
from billing_assets.defs.usage import definitions as usage

event_volume.apply_defaults()

defs = dg.Definitions.merge(
    ingest.defs,
    usage.defs,
    ledger.defs,
    ops.defs,
    health.defs,
    downstream.defs,
    dg.Definitions(resources={"billing": BillingStore()}, executor=dg.in_process_executor),
)
