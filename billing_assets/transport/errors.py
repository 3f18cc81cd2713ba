"""One error type for everything that can go wrong fetching a source.

The message always starts with the source id and never contains a secret, so
it can go to logs, Dagster metadata, checkpoints and `billing status` as is.
"""

from __future__ import annotations


class SourceFetchError(RuntimeError):
    def __init__(self, source_id: str, reason: str, *, retryable: bool = False):
        self.source_id = source_id
        self.reason = reason
        self.retryable = retryable
        super().__init__(f"source {source_id!r}: {reason}")
