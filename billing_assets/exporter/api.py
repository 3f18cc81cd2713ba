"""The exporter's two snapshot endpoints as plain functions of (query, now,
faults) -> (status, body), kept apart from sockets and TLS so the contract
logic reads in one place.

Bodies are assembled from pre-rendered item JSON (see
``TrafficModel.items_json``); only faults that rewrite items fall back to
dicts, since they are about correctness, not speed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from billing_assets.exporter import rfc3339
from billing_assets.exporter.cursor import Cursor, CursorError
from billing_assets.exporter.faults import Faults
from billing_assets.exporter.traffic import TrafficShape

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def error(status: int, message: str, **headers: str) -> Reply:
    return Reply(status, _dumps({"error": message}).encode(), dict(headers))


class BadRequest(ValueError):
    pass


def _time_param(query: dict[str, str], name: str) -> datetime:
    if name not in query:
        raise BadRequest(f"missing parameter: {name}")
    try:
        return rfc3339.parse(query[name])
    except ValueError as exc:
        raise BadRequest(f"{name} is not an RFC3339 timestamp with offset") from exc


def _limit_param(query: dict[str, str]) -> int:
    """Limits above MAX_LIMIT are clamped rather than refused, as most paged
    APIs do; nonsense (non-integers, < 1) is a client bug and gets a 400."""
    raw = query.get("limit")
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError as exc:
        raise BadRequest("limit must be an integer") from exc
    if limit < 1:
        raise BadRequest("limit must be >= 1")
    return min(limit, MAX_LIMIT)


def parse_window_query(query: dict[str, str]) -> tuple[datetime, datetime, int, Cursor]:
    """since/until/limit/cursor of a window request; BadRequest/CursorError when invalid."""
    since = _time_param(query, "since")
    until = _time_param(query, "until")
    if until < since:
        raise BadRequest("until must not be before since")
    limit = _limit_param(query)
    since_us, until_us = rfc3339.to_us(since), rfc3339.to_us(until)
    token = query.get("cursor")
    cursor = Cursor.decode(token, since_us, until_us) if token else Cursor(since_us, until_us, 0, 0)
    return since, until, limit, cursor


class SnapshotApi:
    def __init__(self, shape: TrafficShape, visibility_delay_s: float = 0.0) -> None:
        self.shape = shape
        self.model = shape.model
        self.visibility_delay_s = visibility_delay_s

    def _last_visible_index(self, now: datetime, faults: Faults) -> int:
        """Newest snapshot index a client may see: collected_at <= now - delay."""
        delay_us = round((self.visibility_delay_s + faults.late_seconds) * 1_000_000)
        return (rfc3339.to_us(now) - delay_us) // (self.shape.interval_s * 1_000_000)

    def _envelope_ids(self, faults: Faults, page: int | None) -> tuple[str, str]:
        node_id = self.shape.node_id
        if faults.wrong_node_id_on_page is not None:
            if page == faults.wrong_node_id_on_page:
                node_id = faults.wrong_node_id or f"{node_id}-imposter"
        elif faults.wrong_node_id is not None:
            node_id = faults.wrong_node_id
        return node_id, faults.wrong_env if faults.wrong_env is not None else self.shape.env

    def _render_items(self, start: int, stop: int, faults: Faults) -> list[str]:
        if not faults.rewrites_items:
            rendered = self.model.items_json(start, stop)
            if faults.duplicate_items and rendered:
                rendered.append(rendered[0])
            return rendered
        items = self.model.items(start, stop)
        original_first = _dumps(items[0]) if items else None
        if faults.conflicting_totals:
            for k, item in enumerate(items, start):
                if (k * self.shape.interval_s) % 2 == 0 and item["samples"]:
                    item["samples"][0]["uplink_bytes_total"] += 1
        if faults.schema_violation:
            _break_schema(items)
        rendered = [_dumps(item) for item in items]
        if faults.duplicate_items and original_first is not None:
            rendered.append(original_first)
        return rendered

    def window(self, query: dict[str, str], now: datetime, faults: Faults) -> Reply:
        try:
            since, until, limit, cursor = parse_window_query(query)
        except (BadRequest, CursorError) as exc:
            return error(400, str(exc))
        since_us, until_us = cursor.since_us, cursor.until_us

        window = self.model.index_range(since, until)
        visible_stop = min(window.stop, self._last_visible_index(now, faults) + 1)
        start = window.start + cursor.offset
        stop = max(start, min(start + limit, visible_stop))
        has_more = stop < visible_stop
        next_cursor = (
            Cursor(since_us, until_us, cursor.offset + (stop - start), cursor.page + 1).encode()
            if has_more
            else None
        )
        node_id, env = self._envelope_ids(faults, cursor.page)
        head = _dumps(
            {
                "source_id": self.shape.source_id,
                "node_id": node_id,
                "env": env,
                "window_start": rfc3339.format_utc(since),
                "window_end": rfc3339.format_utc(until),
            }
        )
        tail = _dumps({"next_cursor": next_cursor, "has_more": has_more, "emitted_at": rfc3339.format_utc(now)})
        items = ",".join(self._render_items(start, stop, faults))
        return self._ok(f'{head[:-1]},"items":[{items}],{tail[1:]}', faults)

    def latest(self, now: datetime, faults: Faults) -> Reply:
        k = self._last_visible_index(now, faults)
        node_id, env = self._envelope_ids(faults, page=None)
        if faults.rewrites_items:
            item = self.model.items(k, k + 1)[0]
            if faults.conflicting_totals and (k * self.shape.interval_s) % 2 == 0 and item["samples"]:
                item["samples"][0]["uplink_bytes_total"] += 1
            if faults.schema_violation and item["samples"]:
                item["samples"][0]["uplink_bytes_total"] = -1
            rendered = _dumps(item)
        else:
            rendered = self.model.items_json(k, k + 1)[0]
        head = _dumps({"node_id": node_id, "env": env})
        return self._ok(f"{head[:-1]},{rendered[1:]}", faults)

    @staticmethod
    def _ok(body: str, faults: Faults) -> Reply:
        if faults.malformed_json:
            body = body[: max(1, len(body) // 2)]
        return Reply(200, body.encode())


def _break_schema(items: list[dict]) -> None:
    """The violations promised by ``Faults.schema_violation``, in place."""
    if items:
        items[0].pop("collected_at", None)
    if len(items) > 1 and items[1]["samples"]:
        items[1]["samples"][0]["uplink_bytes_total"] = -abs(items[1]["samples"][0]["uplink_bytes_total"]) - 1
    if len(items) > 2 and items[2]["samples"]:
        sample = items[2]["samples"][0]
        sample["downlink_bytes_total"] = str(sample["downlink_bytes_total"])

