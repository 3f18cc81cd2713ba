"""Driving the real sensors the way the daemon does, against a clock the test moves."""

from __future__ import annotations

from datetime import datetime

import dagster as dg

from billing_assets.definitions import defs
from billing_assets.defs.resources import BillingStore
from billing_assets.defs.runs import BILLING_ASSETS

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


class FakeClock:
    """A `now()` the test sets; shared by the sensors (`defs.automation.clock`) and reference exporters."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _merged(config: dict, extra: dict) -> dict:
    """`config` with `extra` merged in, nested dicts key by key (a request's own values win)."""
    merged = dict(extra)
    for key, value in (config or {}).items():
        merged[key] = _merged(value, merged[key]) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


class SensorDriver:
    """Evaluates one sensor like the daemon (cursor carried over) and runs what it requests in process.

    A request naming a job (`RunRequest(job_name=...)`, a sensor with several jobs) runs that job of
    the definitions with the request's run config; one without runs the implicit asset job, as the
    daemon runs a single-target sensor's asset selection. Either way with the request's tags.
    """

    def __init__(self, instance: dg.DagsterInstance, sensor):
        self.instance, self.sensor, self.cursor = instance, sensor, None
        self.job = defs.resolve_implicit_global_asset_job_def()
        self.runs: list[tuple[dict, bool]] = []
        self.job_names: list[str] = []

    @property
    def executed(self) -> list[dict]:
        return [tags for tags, _ in self.runs]

    def evaluate(self) -> list[dg.RunRequest]:
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources={"billing": BillingStore()}, definitions=defs
        )
        # evaluate_tick, as the daemon does: it also checks each request's job_name against the sensor's jobs.
        data = self.sensor.evaluate_tick(context)
        self.cursor = data.cursor or self.cursor
        return list(data.run_requests or [])

    def job_for(self, request: dg.RunRequest) -> dg.JobDefinition:
        return defs.resolve_job_def(request.job_name) if request.job_name else self.job

    def execute(self, request: dg.RunRequest) -> bool:
        """Runs the request's job; a request of an asset-selection sensor runs that selection, as the daemon would
        (the implicit asset job also holds the hourly assets, whose partitions differ)."""
        job = self.job_for(request)
        selection = None
        if not request.job_name:
            selection = list(request.asset_selection or [dg.AssetKey(name) for name in BILLING_ASSETS])
        result = job.execute_in_process(
            instance=self.instance, tags=request.tags, raise_on_error=False, run_config=_merged(request.run_config, QUIET),
            asset_selection=selection,
        )
        self.runs.append((dict(request.tags), result.success))
        self.job_names.append(job.name)
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
