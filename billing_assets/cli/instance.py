"""The Dagster instance a command talks to, or a sentence saying why there is none."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg


class InstanceError(RuntimeError):
    """No usable Dagster instance; the message says what to set."""


def dagster_instance() -> dg.DagsterInstance:
    """`DAGSTER_HOME`'s instance; a clear error instead of Dagster's traceback when it is unset."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise InstanceError(
            "DAGSTER_HOME is not set: export it as the directory of your Dagster instance "
            "(its dagster.yaml; production: deploy/dagster.yaml), e.g. export DAGSTER_HOME=$HOME/.dagster-billing"
        )
    if not Path(home).is_dir():
        raise InstanceError(f"DAGSTER_HOME={home} is not a directory; create it (mkdir -p) or point it at your instance")
    return dg.DagsterInstance.get()
