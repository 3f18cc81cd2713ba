"""`python -m billing_assets.receiver`: same as the billing-receiver script."""

import sys

from billing_assets.receiver.cli import main

sys.exit(main())
