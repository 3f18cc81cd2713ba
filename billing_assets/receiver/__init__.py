"""Reference receiver: the demo's and the tests' downstream, Kill Bill's
record-usage API over HTTPS with tracking-id dedup and switchable faults."""

from billing_assets.receiver.faults import ReceiverFaults
from billing_assets.receiver.server import ReceiverServer

__all__ = ["ReceiverFaults", "ReceiverServer"]
