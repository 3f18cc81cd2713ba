"""Times in the form each driver stores and parses fastest (UTC always).

SQLite has no time zones and no timestamp type; PostgreSQL has both. These
convert in bulk, once per column or per snapshot, never per value through
SQLAlchemy's type processing (microseconds per value at millions of samples).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
from sqlalchemy import Connection

from billing_assets.storage.dialect import is_postgres


SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # what SQLAlchemy's SQLite DATETIME stores
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MICROSECOND = timedelta(microseconds=1)
# Years 1..9999: what SQLITE_TIME_FORMAT and Python's datetime (SQLAlchemy's reader) can hold.
_SQLITE_MICROS = ((datetime(1, 1, 1, tzinfo=timezone.utc) - UNIX_EPOCH) // MICROSECOND,
                  (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc) - UNIX_EPOCH) // MICROSECOND)  # fmt: skip


def as_utc(value: datetime) -> pd.Timestamp:
    return pd.Timestamp(value).tz_convert("UTC")


def time_param(connection: Connection) -> Callable[[datetime], object]:
    """Converter from an aware datetime to what the driver stores for `UTCDateTime`."""
    if is_postgres(connection):  # text: psycopg's datetime dumper costs more than the rest of a row
        return lambda value: value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    return lambda value: value.astimezone(timezone.utc).strftime(SQLITE_TIME_FORMAT)


def time_column(connection: Connection, values: pd.Series) -> list:
    """Vectorised `time_param` for a UTC datetime column (one strftime, no per-row objects)."""
    utc = pd.to_datetime(values, utc=True)
    if is_postgres(connection):
        return list(utc.dt.strftime("%Y-%m-%d %H:%M:%S.%f+00"))
    return list(utc.dt.strftime(SQLITE_TIME_FORMAT))


def epoch_micros(values: pd.Series) -> np.ndarray:
    """A datetime column (aware, any unit) as int64 microseconds since the Unix epoch, for column copies."""
    utc = pd.to_datetime(values, utc=True)
    return utc.dt.tz_convert(None).dt.as_unit("us").to_numpy().view("int64")


def epoch_micros_of(value: datetime) -> int:
    """`epoch_micros` of one aware datetime (exact integer arithmetic; a naive one raises TypeError)."""
    return (value - UNIX_EPOCH) // MICROSECOND


def sqlite_time_text(micros: np.ndarray) -> np.ndarray:
    """Epoch microseconds as `SQLITE_TIME_FORMAT` text, in one numpy call rather than a strftime per value.

    Outside years 1..9999 raises ValueError: SQLite would store the text but
    nothing could read it back as a datetime.
    """
    micros = np.asarray(micros, dtype=np.int64)
    if len(micros) and (micros.min() < _SQLITE_MICROS[0] or micros.max() > _SQLITE_MICROS[1]):
        raise ValueError("timestamp outside years 1..9999 cannot be stored on SQLite")
    iso = np.datetime_as_string(micros.astype("datetime64[us]"), unit="us")  # YYYY-MM-DDTHH:MM:SS.ffffff
    return np.strings.replace(iso, "T", " ", 1)


def time_select(connection: Connection, column: str) -> str:
    """SQL for reading a `UTCDateTime` column in a form `to_utc_series` parses in bulk."""
    if is_postgres(connection):
        return f"CAST(EXTRACT(EPOCH FROM {column}) * 1000000 AS BIGINT)"
    return column


def to_utc_series(connection: Connection, values: pd.Series, raw_times: bool = False) -> pd.Series:
    """Bulk parse of time values read via `time_select` (or, with `raw_times`, as the driver returns them)."""
    if is_postgres(connection) and not raw_times:
        return pd.to_datetime(values.astype("int64"), unit="us", utc=True)
    if is_postgres(connection):
        return pd.to_datetime(values, utc=True)
    return pd.to_datetime(values, format="ISO8601", utc=True)


def minute_select(connection: Connection, column: str) -> str:
    """SQL for the UTC minute of a `UTCDateTime` column as text `YYYY-MM-DD HH:MM`, to GROUP BY.

    Per-minute figures (a check's verdict per window) come from one grouped
    query over the run's range, not one query per minute; `parse_minute` reads
    the value back. SQLite stores the column as `SQLITE_TIME_FORMAT` text, so
    its first 16 characters are the minute.
    """
    if is_postgres(connection):
        return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')"
    return f"substr({column}, 1, 16)"


def parse_minute(value: str) -> datetime:
    """A `minute_select` value as an aware UTC datetime."""
    return datetime.strptime(value, "%Y-%m-%d %H:%M").replace(tzinfo=timezone.utc)


def from_micros(value: int) -> datetime:
    """The inverse of `epoch_micros_of`."""
    return UNIX_EPOCH + int(value) * MICROSECOND


def micros_column(connection: Connection, values: list) -> np.ndarray:
    """A time column read through `time_select`, as int64 microseconds since the Unix epoch."""
    if not values:
        return np.empty(0, dtype=np.int64)
    if is_postgres(connection):
        return np.asarray(values, dtype=np.int64)
    parsed = pd.to_datetime(pd.Series(values), format="ISO8601", utc=True)
    return parsed.dt.as_unit("us").astype("int64").to_numpy()


def micros_params(connection: Connection, values: np.ndarray) -> list:
    """`time_param` of each int64-microsecond value, formatted once per distinct time.

    Samples share their snapshot's time (~1,000 samples per distinct value),
    so this costs a few hundred strftime calls per source-hour, not 300,000.
    """
    if len(values) == 0:
        return []
    distinct, inverse = np.unique(values, return_inverse=True)
    stamp = time_param(connection)
    stamped = [stamp(from_micros(value)) for value in distinct]
    return [stamped[position] for position in inverse.tolist()]
