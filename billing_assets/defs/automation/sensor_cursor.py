"""The sensors' per-source JSON cursors."""

from __future__ import annotations

import json


def load_cursor(raw: str | None) -> dict[str, str]:
    """A sensor's per-source JSON cursor; anything unreadable starts afresh."""
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
