import dagster as dg

from billing_assets.defs.ledger.billing_ledger import billing_ledger

defs = dg.Definitions(assets=[billing_ledger])
