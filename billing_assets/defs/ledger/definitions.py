import dagster as dg

from billing_assets.defs.ledger.billing_ledger import billing_ledger
from billing_assets.defs.ledger.checks import ledger_checks

defs = dg.Definitions(assets=dg.with_source_code_references([billing_ledger]), asset_checks=ledger_checks)
