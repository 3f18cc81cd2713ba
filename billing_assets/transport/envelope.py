"""The exporter's JSON contract, validated strictly before anything is staged.

Totals must be non-negative JSON integers (no strings, no floats): a counter
that arrives as "12" or -3 is a broken exporter, not something to coerce.

Every limit here exists so that SQLite and PostgreSQL see the same input and
refuse nothing: totals fit a signed 64-bit column (a larger one passed here
and then crashed the insert), stored strings are length-capped (an uncapped
email went into the append-only ledger, which can never shed it) and carry
no control characters (PostgreSQL refuses NUL in text, SQLite stores it).
The rules are pydantic-core constraints, not Python validators, because
samples are validated by the hundred thousand per page.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictStr, ValidationError
from typing_extensions import TypedDict

MAX_TOTAL = 2**63 - 1  # BIGINT on both databases
MAX_EMAIL_CHARS = 320  # RFC 5321: 64 local + @ + 255 domain
MAX_CURSOR_CHARS = 4096
# No C0 control character (NUL included) and no DEL, anywhere in a stored string.
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"

Total = Annotated[int, Field(strict=True, ge=0, le=MAX_TOTAL)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=256, pattern=NO_CONTROL)]
Email = Annotated[StrictStr, Field(max_length=MAX_EMAIL_CHARS, pattern=NO_CONTROL)]
Cursor = Annotated[StrictStr, Field(min_length=1, max_length=MAX_CURSOR_CHARS, pattern=NO_CONTROL)]


class Sample(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    uuid: Name
    email: Email
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
    email: Email
    inbound_tag: Name
    uplink_bytes_total: Total
    downlink_bytes_total: Total


class WindowItem(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    collected_at: AwareDatetime
    samples: list[SampleRow]


class WindowPage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    source_id: Name
    node_id: Name
    env: Name
    window_start: AwareDatetime
    window_end: AwareDatetime
    items: list[WindowItem]
    next_cursor: Cursor | None = None
    has_more: bool
    emitted_at: AwareDatetime


class LatestSnapshot(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    node_id: Name
    env: Name
    collected_at: AwareDatetime
    samples: list[Sample]


def describe_validation(error: ValidationError, limit: int = 3) -> str:
    problems = []
    for item in error.errors()[:limit]:
        where = ".".join(str(part) for part in item["loc"]) or "(body)"
        problems.append(f"{where}: {_message(item)}")
    more = error.error_count() - limit
    suffix = f" (+{more} more)" if more > 0 else ""
    return "; ".join(problems) + suffix


def _message(item) -> str:
    """pydantic's text, except for the control-character rule, whose regex says nothing to an operator."""
    if item["type"] == "string_pattern_mismatch":
        return "contains a control character (NUL or another C0/DEL character)"
    return item["msg"]


def check_identity(source_id: str, expected_node: str, expected_env: str, node_id: str, env: str, where: str) -> str | None:
    """Reason the envelope does not belong to the registered node, or None."""
    if node_id != expected_node:
        return f"{where}: node_id {node_id!r} does not match the registry's {expected_node!r}"
    if env != expected_env:
        return f"{where}: env {env!r} does not match the registry's {expected_env!r}"
    return None

