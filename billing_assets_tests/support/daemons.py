"""Running Dagster's own daemons in-process for a test: backfills and the run queue.

The instance is configured like production's run queue (our coordinator, per-source tag limit)
but launches runs synchronously in this process, so a test can submit a
backfill and observe its runs finish without a daemon process or timing.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import InProcessTestWorkspaceLoadTarget
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._daemon.backfill import execute_backfill_iteration
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

TEST_INSTANCE_YAML = """\
telemetry:
  enabled: false
run_launcher:
  module: dagster._core.launcher.sync_in_memory_run_launcher
  class: SyncInMemoryRunLauncher
run_coordinator:
  module: billing_assets.defs.run_coordinator
  class: BillingRunCoordinator
  config:
    max_concurrent_runs: 4
    tag_concurrency_limits:
      - key: billing/source
        value:
          applyLimitPerUniqueValue: true
        limit: 1
"""


def write_test_instance_yaml(dagster_home: Path) -> None:
    (dagster_home / "dagster.yaml").write_text(TEST_INSTANCE_YAML)


@contextmanager
def in_process_workspace(instance: dg.DagsterInstance):
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="billing_assets.definitions", executable_path=sys.executable),
        location_name="billing_assets",
    )
    with WorkspaceProcessContext(instance, InProcessTestWorkspaceLoadTarget(origin)) as context:
        yield context


def drive_backfill(instance: dg.DagsterInstance, backfill_id: str, max_iterations: int = 10):
    """Alternate the backfill daemon and the run queue daemon until the backfill is done."""
    logger = logging.getLogger("billing-test-daemons")
    queue = QueuedRunCoordinatorDaemon(interval_seconds=1)
    with in_process_workspace(instance) as context:
        for _ in range(max_iterations):
            list(execute_backfill_iteration(context, logger))
            list(queue.run_iteration(context))
            backfill = instance.get_backfill(backfill_id)
            if backfill.status.value.startswith("COMPLETED") or backfill.status.value in ("FAILED", "CANCELED"):
                return backfill
    raise AssertionError(f"backfill {backfill_id} not done after {max_iterations} iterations")
