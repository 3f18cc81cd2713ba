"""The code location: every domain's definitions merged, plus shared pieces.

Steps run in-process: the four billing steps of a run are a strict chain that
waits on the network and the database, so separate step processes would only
add start-up time per run.
"""

import dagster as dg

from billing_assets.defs.ingest.definitions import defs as ingest_defs
from billing_assets.defs.ledger.definitions import defs as ledger_defs
from billing_assets.defs.ops.definitions import defs as ops_defs
from billing_assets.defs.resources import BillingStore
from billing_assets.defs.usage.definitions import defs as usage_defs

defs = dg.Definitions.merge(
    ingest_defs,
    usage_defs,
    ledger_defs,
    ops_defs,
    dg.Definitions(resources={"billing": BillingStore()}, executor=dg.in_process_executor),
)
