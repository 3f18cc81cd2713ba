"""Is an hour complete enough to remit? Pure: facts in, verdict and reasons out.

Remitting an hour before every source has delivered it would send a total the
next collection corrects, which costs a revision on a revisable target and a
carried difference on a marketplace; worse, an hour remitted while a source
was silently failing looks final. So an hour is complete only when every
source that bills in it has collected past its end plus the settle time and
has no missing window in it. A source disabled now does not hold an hour
back (the registry has no history of `enabled`, so "disabled for the whole
hour" is read as "disabled"; its data stays and is still summed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from billing_assets.core.timeutil import format_rfc3339


@dataclass(frozen=True)
class SourceFacts:
    source_id: str
    enabled: bool
    mode: str
    billing_start: datetime
    collected_until: datetime | None
    missing: tuple[tuple[datetime, datetime], ...] = ()


@dataclass
class Verdict:
    hour: datetime
    complete: bool
    sources: dict[str, str] = field(default_factory=dict)
    """source_id -> 'ok' | 'disabled' | 'not billing yet' | why it holds the hour back."""

    @property
    def holding_back(self) -> list[str]:
        return sorted(sid for sid, state in self.sources.items() if state not in ("ok", "disabled", "not billing yet"))


def evaluate_hour(hour: datetime, sources: list[SourceFacts], settle: timedelta) -> Verdict:
    end = hour + timedelta(hours=1)
    states: dict[str, str] = {}
    for facts in sources:
        if not facts.enabled:
            states[facts.source_id] = "disabled"
        elif facts.billing_start >= end:
            states[facts.source_id] = "not billing yet"
        elif facts.mode == "legacy_latest":
            states[facts.source_id] = "legacy /latest source cannot prove completeness; force the hour"
        elif facts.collected_until is None or facts.collected_until < end + settle:
            seen = format_rfc3339(facts.collected_until) if facts.collected_until else "never"
            states[facts.source_id] = f"collected until {seen}, needs {format_rfc3339(end + settle)}"
        elif facts.missing:
            first = facts.missing[0]
            states[facts.source_id] = (
                f"{len(facts.missing)} missing window range(s), first [{format_rfc3339(first[0])}, {format_rfc3339(first[1])})"
            )
        else:
            states[facts.source_id] = "ok"
    verdict = Verdict(hour, complete=False, sources=states)
    verdict.complete = not verdict.holding_back
    return verdict
