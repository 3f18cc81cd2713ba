"""Switchable upstream misbehaviour, so pipeline tests can provoke each
failure mode of a real exporter on demand and deterministically.

Replace ``server.faults`` with a new ``Faults`` between runs (that also
restarts the request counter behind ``fail_first_n``/``error_rate``), or
mutate the fields of the current one in place.

Injected faults apply to the ``/v1/`` API; ``/healthz`` only reflects
``down``. Authentication is checked first: a rejected request neither sees a
fault nor advances the request counter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Faults:
    error_rate: float = 0.0
    """Fraction of API requests answered 503, spread evenly over the request
    counter (request n fails when floor((n+1)*rate) > floor(n*rate)); 1.0 fails all."""
    fail_first_n: int = 0
    """The first n API requests after these faults were installed get 503."""
    down: bool = False
    """Every request, including /healthz, gets 503: an outage."""
    delay_s: float = 0.0
    """Real sleep before answering an API request (client timeouts)."""
    wrong_node_id: str | None = None
    """Envelope node_id of every window page and of /latest."""
    wrong_env: str | None = None
    """Envelope env of every window page and of /latest."""
    wrong_node_id_on_page: int | None = None
    """Only window page number p (0-based, counted through the cursor) carries
    a wrong node_id: ``wrong_node_id`` or, if unset, ``<node_id>-imposter``;
    other pages and /latest are then correct."""
    duplicate_items: bool = False
    """Each non-empty window page repeats its first item at its end."""
    conflicting_totals: bool = False
    """Every served item (window and /latest) whose collected_at falls on an
    even Unix second gets +1 on uplink_bytes_total of its first sample. Same
    identity, different total: a conflict against any delivery made while
    this fault was off (and, with duplicate_items, the repeated copy is the
    unmodified original, so a single page also carries a conflict)."""
    late_seconds: int = 0
    """Items become visible only once clock() >= collected_at + late_seconds."""
    malformed_json: bool = False
    """API bodies (status 200) are truncated and not valid JSON."""
    schema_violation: bool = False
    """Each window page's first item lacks collected_at; its second item's
    first sample has a negative uplink total and its third item's a string
    downlink total. /latest gets a negative uplink total on its first sample."""

    def rejects(self, request_number: int) -> bool:
        """Whether the n-th (0-based) API request since install gets a 503."""
        if self.down or request_number < self.fail_first_n:
            return True
        rate = min(max(self.error_rate, 0.0), 1.0)
        return math.floor((request_number + 1) * rate) > math.floor(request_number * rate)

    @property
    def rewrites_items(self) -> bool:
        return self.conflicting_totals or self.schema_violation
