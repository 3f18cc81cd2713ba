"""The legacy pull as a run: one `/v1/snapshots/latest` snapshot of one source.

`legacy_latest_sensor` requests one `legacy_pull_job` run per enabled
`legacy_latest`/`dual` source and tick, tagged `source_tags(sid, "legacy-pull")`,
so the run queue's per-source `billing/source` limit serializes a source's
pulls with its billing runs, and every pull is a run in the UI with its log,
its outcome and its metadata. The op calls `pipeline.legacy.pull_latest`:

- `legacy_latest`: the snapshot is staged into `exporter_snapshot_rows` like a
  window page (the sensor's next tick finds it there and requests the billing
  range run); a failure is recorded in the source's checkpoint (`last_error`).
- `dual`: the snapshot goes to `legacy_snapshot_samples` for the dual-read
  comparison, which nothing bills; a failure is only logged (the checkpoint
  belongs to window collection).

A failed pull fails the run with a message naming the source. There is no op
retry: the exporter client retries the request itself, and the sensor's next
tick (30 s) pulls again.

Launching a pull by hand (UI launchpad): config `ops.pull_legacy_snapshot.config.source_id`;
the run coordinator tags the run `billing/source=<source_id>` from that config, so the
per-source queue limit applies.
"""

import dagster as dg

from billing_assets.core.timeutil import format_rfc3339
from billing_assets.defs.automation import clock
from billing_assets.defs.resources import BillingStore
from billing_assets.defs.runs import SOURCE_TAG, TRIGGER_TAG
from billing_assets.pipeline.legacy import pull_latest
from billing_assets.registry.credentials import CredentialError
from billing_assets.registry.model import RegistryError
from billing_assets.transport.errors import SourceFetchError

PULL_OP = "pull_legacy_snapshot"
PULL_TRIGGER = "legacy-pull"


class LegacyPullConfig(dg.Config):
    source_id: str
    """The registry source whose `/v1/snapshots/latest` is pulled (mode `legacy_latest` or `dual`)."""


def pull_run_config(source_id: str) -> dict:
    """The run config of a pull of `source_id` (what the sensor's RunRequest carries)."""
    return {"ops": {PULL_OP: {"config": {"source_id": source_id}}}}


@dg.op(name=PULL_OP, description="Pull and store one /v1/snapshots/latest snapshot of one legacy_latest or dual source.")
def pull_legacy_snapshot(context: dg.OpExecutionContext, config: LegacyPullConfig, billing: BillingStore) -> dg.Output[None]:
    sid = config.source_id
    tagged = context.run.tags.get(SOURCE_TAG)
    if tagged != sid:
        context.log.warning(
            f"{sid}: this run has {SOURCE_TAG}={tagged!r}; without {SOURCE_TAG}={sid} the per-source run queue "
            "limit does not serialize it with the source's billing runs"
        )
    try:
        source = billing.registry().get(sid)
        pulled = pull_latest(billing.engine(), source, clock.now)
    except (SourceFetchError, RegistryError, CredentialError) as error:
        raise dg.Failure(
            description=f"legacy pull of source {sid!r} failed: {error}",
            metadata={"source_id": sid, "error": str(error)},
        ) from error
    context.log.info(
        f"{sid}: pulled {pulled.samples} samples at {format_rfc3339(pulled.collected_at)} ({pulled.mode}), "
        f"{pulled.staged} rows {'staged for billing' if pulled.mode == 'legacy_latest' else 'stored for comparison'}"
        + (" (snapshot time staged before)" if pulled.repeated else "")
    )
    return dg.Output(
        None,
        metadata={
            "source_id": sid,
            "mode": pulled.mode,
            "collected_at": format_rfc3339(pulled.collected_at),
            "samples": pulled.samples,
            "rows_stored": pulled.staged,
            "repeated_snapshot": pulled.repeated,
        },
    )


@dg.job(
    tags={TRIGGER_TAG: PULL_TRIGGER},
    description="One /v1/snapshots/latest pull of one legacy_latest or dual source (requested by legacy_latest_sensor).",
)
def legacy_pull_job():
    pull_legacy_snapshot()
