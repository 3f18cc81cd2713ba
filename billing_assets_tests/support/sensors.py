"""Driving the real sensors the way the daemon does, against a clock the test moves."""

from __future__ import annotations

from datetime import datetime

import dagster as dg

from billing_assets.definitions import defs
from billing_assets.defs.resources import BillingStore

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


class FakeClock:
    """A `now()` the test sets; shared by the sensors (`defs.automation.clock`) and reference exporters."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class SensorDriver:
    """Evaluates one sensor like the daemon (cursor carried over) and runs what it requests in process."""

    def __init__(self, instance: dg.DagsterInstance, sensor):
        self.instance, self.sensor, self.cursor = instance, sensor, None
        self.job = defs.resolve_implicit_global_asset_job_def()
        self.runs: list[tuple[dict, bool]] = []

    @property
    def executed(self) -> list[dict]:
        return [tags for tags, _ in self.runs]

    def evaluate(self) -> list[dg.RunRequest]:
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources={"billing": BillingStore()}, definitions=defs
        )
        result = self.sensor(context)
        if isinstance(result, dg.SkipReason):
            return []
        self.cursor = result.cursor or self.cursor
        return list(result.run_requests or [])

    def execute(self, request: dg.RunRequest) -> bool:
        result = self.job.execute_in_process(instance=self.instance, tags=request.tags, raise_on_error=False, run_config=QUIET)
        self.runs.append((dict(request.tags), result.success))
        return result.success

    def tick(self) -> list[bool]:
        """Evaluate once and run every request; one outcome per run."""
        return [self.execute(request) for request in self.evaluate()]

    def until_idle(self, limit: int = 10) -> int:
        launched = 0
        for _ in range(limit):
            outcomes = self.tick()
            if not outcomes:
                return launched
            assert all(outcomes), self.runs[-1]
            launched += len(outcomes)
        raise AssertionError(f"sensor still requesting after {limit} ticks")
