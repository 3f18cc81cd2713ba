"""Fewer, batched Dagster events for single-run partition ranges.

A range run of N minutes records, per asset, N "materialization planned"
events and N materializations. With the OSS storages each is its own write
(on PostgreSQL its own connection), so a 60-minute run cost 7-12x a
one-minute run while the billing work in it was a fraction of a second.
Two Dagster switches bring that down (bench/RESULTS.md, round 4):

- `DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS`: one planned event per
  asset carrying the whole range instead of one per minute. Dagster's
  trade-off: the partitions of a run that fails show as missing, not failed,
  in the UI. Failures stay visible where operators of this project look
  for them: the failed run, `source_health` and its checks, `billing status`.
- `DAGSTER_EVENT_BATCH_SIZE`: an asset's per-minute materializations are
  written as batches (one INSERT per batch on PostgreSQL storage; SQLite
  storage still writes them one at a time). The billing database, not these
  events, is the record of what was charged, so a batch lost to a crash
  only makes Dagster re-run idempotent work.

Both are read from the environment of the process that creates the run
(daemon, webserver, CLI) or executes it (run worker). Importing this code
location sets them as defaults in its own processes; `deploy/` sets them for
the daemon and webserver. An operator's own value always wins.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

DEFAULTS = {
    "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true",
    "DAGSTER_EVENT_BATCH_SIZE": "1000",
}


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set each default that the operator has not set; return what is in effect."""
    for name, value in DEFAULTS.items():
        environ.setdefault(name, value)
    return {name: environ[name] for name in DEFAULTS}
