"""The exporter's JSON contract, validated strictly before anything is staged.

Totals must be non-negative JSON integers (no strings, no floats): a counter
that arrives as "12" or -3 is a broken exporter, not something to coerce.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictStr, ValidationError
from typing_extensions import TypedDict

Total = Annotated[int, Field(strict=True, ge=0)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=256)]


class Sample(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    uuid: Name
    email: StrictStr
    inbound_tag: Name
    uplink_bytes_total: Total
    downlink_bytes_total: Total


class Item(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    collected_at: AwareDatetime
    samples: list[Sample]


class SampleRow(TypedDict):
    """A window sample, with exactly `Sample`'s rules, validated into a plain dict.

    A window page holds up to page_limit x series samples (150,000 at 1,000
    users); building a model object per sample cost more than the whole
    download. Validation still happens in pydantic-core, with the same
    strictness and the same error locations (`items.3.samples.17.uplink_bytes_total`).
    """

    uuid: Name
    email: StrictStr
    inbound_tag: Name
    uplink_bytes_total: Total
    downlink_bytes_total: Total


class WindowItem(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    collected_at: AwareDatetime
    samples: list[SampleRow]


class WindowPage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    source_id: StrictStr
    node_id: StrictStr
    env: StrictStr
    window_start: AwareDatetime
    window_end: AwareDatetime
    items: list[WindowItem]
    next_cursor: StrictStr | None = None
    has_more: bool
    emitted_at: AwareDatetime


class LatestSnapshot(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    node_id: StrictStr
    env: StrictStr
    collected_at: AwareDatetime
    samples: list[Sample]


def describe_validation(error: ValidationError, limit: int = 3) -> str:
    problems = []
    for item in error.errors()[:limit]:
        where = ".".join(str(part) for part in item["loc"]) or "(body)"
        problems.append(f"{where}: {item['msg']}")
    more = error.error_count() - limit
    suffix = f" (+{more} more)" if more > 0 else ""
    return "; ".join(problems) + suffix


def check_identity(source_id: str, expected_node: str, expected_env: str, node_id: str, env: str, where: str) -> str | None:
    """Reason the envelope does not belong to the registered node, or None."""
    if node_id != expected_node:
        return f"{where}: node_id {node_id!r} does not match the registry's {expected_node!r}"
    if env != expected_env:
        return f"{where}: env {env!r} does not match the registry's {expected_env!r}"
    return None

