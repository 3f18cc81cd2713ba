"""The run queue's coordinator: every run that touches a source carries `billing/source`.

The queue's per-source limit (deploy/dagster.yaml, `tag_concurrency_limits` on
`billing/source`) and the sensors' in-flight check only see runs with that
tag. Our own launchers set it, but a replay launched from the UI (a backfill
through GraphQL `launchPartitionBackfill`, or "Materialize" of one partition)
carries only Dagster's partition tags. `submit_run` is the one call every
launcher goes through before a run is queued, so the tag is derived there from
the run's own partition tags (docs/ui.md, research note 3).
"""

from __future__ import annotations

import dagster as dg

from billing_assets.defs.runs import SOURCE_TAG, source_of_run


class BillingRunCoordinator(dg.QueuedRunCoordinator):
    """`QueuedRunCoordinator` that tags a run with its source before queueing it."""

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        if SOURCE_TAG not in run.tags:
            source = source_of_run(run.tags) or _configured_source(run.run_config)
            if source is not None:
                self._instance.add_run_tags(run.run_id, {SOURCE_TAG: source})
                run = self._instance.get_run_by_id(run.run_id) or run
                context = dg.SubmitRunContext(run, context.workspace)
        return super().submit_run(context)


def _configured_source(run_config: dict | None) -> str | None:
    """The `source_id` an op is configured with (a legacy pull launched from the launchpad)."""
    found = {
        op.get("config", {}).get("source_id")
        for op in ((run_config or {}).get("ops") or {}).values()
        if isinstance(op, dict) and isinstance(op.get("config"), dict)
    } - {None}
    return found.pop() if len(found) == 1 else None
