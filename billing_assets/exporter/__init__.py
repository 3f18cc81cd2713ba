"""Reference exporter: the demo's and the tests' upstream, serving the window
and legacy snapshot APIs over HTTPS from deterministic synthetic traffic."""

from billing_assets.exporter.certs import TlsMaterial, generate_tls_material, write_unrelated_ca_bundle
from billing_assets.exporter.faults import Faults
from billing_assets.exporter.server import ExporterServer, ServerTls
from billing_assets.exporter.traffic import TrafficModel, TrafficShape

__all__ = [
    "ExporterServer",
    "Faults",
    "ServerTls",
    "TlsMaterial",
    "TrafficModel",
    "TrafficShape",
    "generate_tls_material",
    "write_unrelated_ca_bundle",
]
