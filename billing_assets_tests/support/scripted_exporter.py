"""An exporter that serves exactly the history a test scripts, over real HTTPS.

The reference exporter serves synthetic traffic; replay tests need arbitrary
histories instead: late items, duplicates, conflicting re-deliveries, pages
split or overlapping at chosen points, items out of `collected_at` order. This
server reuses the reference exporter's TLS, authentication and HTTP handling
(it is an `ExporterServer` whose window API is swapped) and answers with the
same envelope and cursor contract, from a `Script` the test mutates between
runs. One server serves many hypothesis examples: each example installs its
own script (with its own source and node, so examples never share billing
keys) instead of paying for a server start.
"""

from __future__ import annotations

import json
import random
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from billing_assets.core.timeutil import format_rfc3339
from billing_assets.exporter import ExporterServer, ServerTls, TrafficShape, generate_tls_material
from billing_assets.exporter import rfc3339
from billing_assets.exporter.api import BadRequest, Reply, error, parse_window_query
from billing_assets.exporter.cursor import Cursor, CursorError
from billing_assets.exporter.faults import Faults


@dataclass(frozen=True)
class ScriptedSample:
    uuid: str
    inbound_tag: str
    uplink_bytes_total: int
    downlink_bytes_total: int
    email: str = ""

    def wire(self) -> dict:
        return {
            "uuid": self.uuid,
            "email": self.email or f"{self.uuid}@example.test",
            "inbound_tag": self.inbound_tag,
            "uplink_bytes_total": self.uplink_bytes_total,
            "downlink_bytes_total": self.downlink_bytes_total,
        }


@dataclass(frozen=True)
class ScriptedItem:
    """One snapshot as delivered; `visible_from` is the script phase it appears in."""

    collected_at: datetime
    samples: tuple[ScriptedSample, ...]
    visible_from: int = 0

    def wire(self) -> str:
        return json.dumps(
            {"collected_at": format_rfc3339(self.collected_at), "samples": [s.wire() for s in self.samples]},
            separators=(",", ":"),
        )


@dataclass
class Script:
    """What the exporter serves for one (source, node).

    Items are served in list order after a stable sort by `collected_at`, so
    an item appended later (a re-delivery) is always served after the one it
    repeats. `page_sizes` are cycled to cut pages (the client's `limit` still
    caps them); `page_overlap` makes each page start that many items before the
    previous one ended (an exporter re-sending items across pages);
    `shuffle_seed` serves same-time groups in a seeded random order instead of
    by time (an exporter breaking the ordering promise). Raise `phase` to make
    late items visible.
    """

    source_id: str
    node_id: str
    env: str = "test"
    items: list[ScriptedItem] = field(default_factory=list)
    page_sizes: tuple[int, ...] = (100,)
    page_overlap: int = 0
    shuffle_seed: int | None = None
    phase: int = 0

    def served(self, since: datetime, until: datetime) -> list[ScriptedItem]:
        chosen = [i for i in self.items if i.visible_from <= self.phase and since <= i.collected_at < until]
        chosen.sort(key=lambda item: item.collected_at)
        if self.shuffle_seed is None:
            return chosen
        groups: dict[datetime, list[ScriptedItem]] = {}
        for item in chosen:
            groups.setdefault(item.collected_at, []).append(item)
        order = list(groups)
        random.Random(self.shuffle_seed).shuffle(order)
        return [item for at in order for item in groups[at]]

    def page_bounds(self, offset: int, page: int, limit: int, total: int) -> tuple[int, int]:
        """[start, stop) of page number `page` whose first item is `offset`."""
        size = max(1, min(limit, self.page_sizes[page % len(self.page_sizes)]))
        return offset, min(total, offset + size)

    def next_offset(self, start: int, stop: int) -> int:
        """Where the next page starts: overlapping the previous one, but always moving on."""
        return max(start + 1, stop - self.page_overlap)


class ScriptedWindowApi:
    """The window endpoint of the upstream contract, answering from a `Script`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.script: Script | None = None
        self.requests = 0

    def install(self, script: Script) -> None:
        with self._lock:
            self.script = script
            self.requests = 0

    def window(self, query: dict[str, str], now: datetime, faults: Faults) -> Reply:
        with self._lock:
            script = self.script
            self.requests += 1
        if script is None:
            return error(503, "no script installed")
        try:
            since, until, limit, cursor = parse_window_query(query)
        except (BadRequest, CursorError) as exc:
            return error(400, str(exc))
        since_us, until_us = cursor.since_us, cursor.until_us
        served = script.served(since, until)
        start, stop = script.page_bounds(cursor.offset, cursor.page, limit, len(served))
        has_more = stop < len(served)
        next_cursor = (
            Cursor(since_us, until_us, script.next_offset(start, stop), cursor.page + 1).encode() if has_more else None
        )
        envelope = {
            "source_id": script.source_id,
            "node_id": script.node_id,
            "env": script.env,
            "window_start": rfc3339.format_utc(since),
            "window_end": rfc3339.format_utc(until),
            "items": "@ITEMS@",
            "next_cursor": next_cursor,
            "has_more": has_more,
            "emitted_at": rfc3339.format_utc(now),
        }
        items = ",".join(item.wire() for item in served[start:stop])
        body = json.dumps(envelope, separators=(",", ":")).replace('"@ITEMS@"', f"[{items}]")
        return Reply(200, body.encode())

    def latest(self, now: datetime, faults: Faults) -> Reply:
        return error(404, "the scripted exporter serves the window API only")


class ScriptedExporter(ExporterServer):
    """A reference `ExporterServer` (TLS, bearer auth, HTTP) whose snapshots come from a script."""

    def __init__(self, tls: ServerTls, bearer_token: str, **kwargs) -> None:
        placeholder = TrafficShape(node_id="scripted", env="test", source_id="scripted", users=0)
        super().__init__(placeholder, tls, auth="bearer", bearer_token=bearer_token, **kwargs)
        self.api = ScriptedWindowApi()

    def install(self, script: Script) -> None:
        self.api.install(script)

    @property
    def script(self) -> Script | None:
        return self.api.script


@dataclass
class ScriptedUpstream:
    """A running scripted exporter plus what a registry entry needs to trust it."""

    server: ScriptedExporter
    ca_bundle: str
    server_name: str
    token_variable: str
    token: str = field(repr=False)

    def registry_entry(self, script: Script, billing_start: datetime, **overrides) -> dict:
        return {
            "source_id": script.source_id,
            "node_id": script.node_id,
            "env": script.env,
            "base_url": self.server.url,
            "enabled": True,
            "auth_mode": "bearer",
            "credential_ref": f"env:{self.token_variable}",
            "ca_bundle_ref": f"file:{self.ca_bundle}",
            "server_name": self.server_name,
            "request_timeout": "5s",
            "billing_start": format_rfc3339(billing_start),
            **overrides,
        }

    def stop(self) -> None:
        self.server.stop()


def start_scripted_upstream(root: Path, token_variable: str = "BILLING_TEST_SCRIPTED_TOKEN") -> ScriptedUpstream:
    """Mint TLS material under `root`, start the server on loopback.

    The caller must export the token under `token_variable` (it is returned,
    never written to disk) before a pipeline step resolves the credential.
    """
    server_name = "scripted.exporter.test"
    tls = generate_tls_material(root / "tls", server_names=(server_name,))
    token = secrets.token_urlsafe(20)
    server = ScriptedExporter(ServerTls(tls.server_cert, tls.server_key), token)
    server.start()
    return ScriptedUpstream(server, tls.ca_cert, server_name, token_variable, token)
