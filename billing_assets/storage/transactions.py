"""Transactions that stay correct under concurrent writers: per-source locks and race retries."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import IntegrityError


T = TypeVar("T")


RACE_ATTEMPTS = 3


def in_transaction_retrying_races(engine: Engine, work: Callable[[Connection], T], attempts: int = RACE_ATTEMPTS) -> T:
    """`work(connection)` in its own transaction, run again from scratch when a
    unique constraint refused it because a racing writer got there first.

    The retry re-reads what is stored, so it writes only what is still missing:
    the constraint, not the Python read before it, decides what is written once.
    """
    for attempt in range(1, attempts + 1):
        try:
            with engine.begin() as connection:
                return work(connection)
        except IntegrityError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable: attempts must be >= 1")


def source_lock(connection: Connection, scope: str, source_id: str) -> None:
    """Serialise writers of one source's `scope` on PostgreSQL for the transaction.

    SQLite needs nothing: every write transaction there is BEGIN IMMEDIATE, so
    writers are serial already.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"{scope}:{source_id}"}
        )
