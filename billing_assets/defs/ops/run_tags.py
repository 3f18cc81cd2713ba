"""Tags that tie a Dagster run to one source, and what they let us ask the instance.

`billing/source` is what `tag_concurrency_limits` in deploy/dagster.yaml keys
on (one run per source at a time), and what the sensor checks so it never
requests a range while the previous one is still queued or running.
"""

from __future__ import annotations

import json

import dagster as dg
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

SOURCE_TAG = "billing/source"
TRIGGER_TAG = "billing/trigger"


def source_tags(source_id: str, trigger: str) -> dict[str, str]:
    return {SOURCE_TAG: source_id, TRIGGER_TAG: trigger}


def has_unfinished_run(instance: dg.DagsterInstance, source_id: str) -> bool:
    records = instance.get_run_records(
        filters=dg.RunsFilter(tags={SOURCE_TAG: source_id}, statuses=list(NOT_FINISHED_STATUSES)), limit=1
    )
    return bool(records)


def load_cursor(raw: str | None) -> dict[str, str]:
    """A sensor's per-source JSON cursor; anything unreadable starts afresh."""
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
