"""`python -m billing_assets.exporter`: same as the billing-exporter script."""

import sys

from billing_assets.exporter.cli import main

sys.exit(main())
