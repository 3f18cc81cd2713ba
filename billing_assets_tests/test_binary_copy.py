"""Column copies store exactly the values given, on a real PostgreSQL and on SQLite.

The ledger's append goes through `copy_columns`: on PostgreSQL our own
encoder of the binary COPY format (storage/binary_copy.py), where a wrong
offset, byte order, epoch shift or numeric digit group would not fail loudly
but store a different amount or time. The oracle is independent of the
encoder: the values are read back in PostgreSQL's own text forms (numeric as
text, times as exact epoch microseconds) and compared with what Python
generated, so a mistake in either direction shows.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import exc

from billing_assets.storage import binary_copy
from billing_assets.storage.bulk import copy_columns
from billing_assets.storage.engine import get_engine
from billing_assets.storage.times import UNIX_EPOCH, sqlite_time_text

PG_MIN_MICROS = -211_813_488_000_000_000 + 946_684_800_000_000  # 4714-11-24 BC, PostgreSQL's earliest timestamp
PG_EPOCH_MICROS = 946_684_800_000_000  # 2000-01-01 UTC, where PostgreSQL counts from
SQLITE_MICROS = (-62_135_596_800_000_000, 253_402_300_799_999_999)  # years 1..9999
TABLES = {
    "postgresql": "CREATE TABLE copy_probe (id int4 PRIMARY KEY, tag text, i4 int4, i8 bigint, at timestamptz,"
    " label text, money numeric(20, 9), n numeric)",
    # decimals as text: what `types.Money` stores on SQLite
    "sqlite": "CREATE TABLE copy_probe (id INTEGER PRIMARY KEY, tag TEXT, i4 INTEGER, i8 INTEGER, at TEXT, label TEXT, money TEXT, n TEXT)",
}
READ_BACK = {
    # timestamptz_send: PostgreSQL's exact int64 µs since 2000 (EXTRACT(EPOCH) rounds near the int64 limits)
    "postgresql": "SELECT id, tag, i4, i8, timestamptz_send(at), label, money::text, n::text FROM copy_probe ORDER BY id",
    "sqlite": "SELECT id, tag, i4, i8, at, label, money, n FROM copy_probe ORDER BY id",
}


@pytest.fixture(scope="module")
def postgres_engine(postgres_server):
    return _with_probe_table(get_engine(postgres_server.create_database("copy")))


@pytest.fixture(scope="module")
def sqlite_engine(tmp_path_factory):
    return _with_probe_table(get_engine(f"sqlite:///{tmp_path_factory.mktemp('copy') / 'copy.sqlite'}"))


def _with_probe_table(engine):
    with engine.begin() as connection:
        connection.exec_driver_sql(TABLES[engine.dialect.name])
    return engine


texts = st.one_of(
    st.none(),
    st.sampled_from(["", "a", "é", "日本語", "🦀 crab", "x" * 300]),  # repeats: one pool entry, many rows
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12),  # PostgreSQL text has no NUL
)
INT64 = st.integers(-(2**63), 2**63 - 1)


@st.composite
def tables(draw, micros: tuple[int, int]):
    rows = draw(st.integers(0, 30))
    column = lambda strategy: draw(st.lists(strategy, min_size=rows, max_size=rows))  # noqa: E731
    return {
        "tag": column(st.sampled_from(["vless-in", "vmess-in", None])),  # a second text column: rows group by both
        "i4": column(st.integers(-(2**31), 2**31 - 1)),
        "i8": column(INT64),
        "at": column(st.one_of(st.integers(*micros), st.sampled_from([0, -1, 946_684_800_000_000, micros[0], micros[1]]))),
        "label": column(texts),
        "money": column(st.one_of(INT64, st.sampled_from([0, 1, -1, 10**9, -(10**9), 2**63 - 1, -(2**63)]))),
        "n": column(INT64),
        "scale": draw(st.sampled_from([0, 1, 4, 5, 9, 18])),
        "chunk_rows": draw(st.sampled_from([1, 2, 7, binary_copy.CHUNK_ROWS])),
    }


def _copy(connection, table: dict) -> int:
    ids = np.arange(len(table["i4"]), dtype=np.int64)
    return copy_columns(connection, "copy_probe", {
        "tag": binary_copy.text(table["tag"]),  # text first and between fixed columns: the copy reorders them
        "id": binary_copy.int4(ids),
        "i4": binary_copy.int4(table["i4"]),
        "i8": binary_copy.int8(table["i8"]),
        "at": binary_copy.timestamptz(table["at"]),
        "label": binary_copy.text(table["label"]),
        "money": binary_copy.numeric(table["money"], 9),
        "n": binary_copy.numeric(table["n"], table["scale"]),
    }, chunk_rows=table["chunk_rows"])  # fmt: skip


def _decimal(scaled: int, scale: int) -> str:
    return format(Decimal(scaled).scaleb(-scale), "f")


def _round_trip(engine, table: dict) -> list[tuple]:
    """Copy `table` and read it back, in a transaction that is rolled back (the table stays empty)."""
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            assert _copy(connection, table) == len(table["i4"])
            return [tuple(row) for row in connection.exec_driver_sql(READ_BACK[engine.dialect.name])]
        finally:
            transaction.rollback()


def _expected(table: dict, stored_time) -> list[tuple]:
    return [
        (index, tag, i4, i8, stored_time(at), label, _decimal(money, 9), _decimal(n, table["scale"]))
        for index, (tag, i4, i8, at, label, money, n) in enumerate(
            zip(table["tag"], table["i4"], table["i8"], table["at"], table["label"], table["money"], table["n"])
        )
    ]


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.postgres
@PROPERTY
@given(table=tables((PG_MIN_MICROS, 2**63 - 1)))
def test_postgres_stores_exactly_the_columns_copied(postgres_engine, table):
    stored = [(*row[:4], PG_EPOCH_MICROS + int.from_bytes(row[4], "big", signed=True), *row[5:]) for row in _round_trip(postgres_engine, table)]
    assert stored == _expected(table, lambda micros: micros)


@PROPERTY
@given(table=tables(SQLITE_MICROS))
def test_sqlite_stores_exactly_the_columns_copied(sqlite_engine, table):
    def stored_time(micros: int) -> str:  # SQLITE_TIME_FORMAT by Python's own datetime, not numpy's
        return (datetime(1970, 1, 1) + timedelta(microseconds=micros)).isoformat(" ", "microseconds")

    assert _round_trip(sqlite_engine, table) == _expected(table, stored_time)


@pytest.mark.postgres
def test_postgres_reads_the_copied_times_as_the_same_instants(postgres_engine):
    """The epoch shift checked through psycopg's own timestamptz parser, not just our arithmetic."""
    instants = [datetime(1, 1, 1, tzinfo=timezone.utc), datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc),
                datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2026, 12, 1, 13, 7, 0, 123456, tzinfo=timezone.utc),
                datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc)]  # fmt: skip
    micros = [(instant - UNIX_EPOCH) // timedelta(microseconds=1) for instant in instants]
    with postgres_engine.connect() as connection, connection.begin() as transaction:
        copy_columns(connection, "copy_probe", {"id": binary_copy.int4(range(5)), "at": binary_copy.timestamptz(micros)})
        stored = [row[0] for row in connection.exec_driver_sql("SELECT at FROM copy_probe ORDER BY id")]
        transaction.rollback()
    assert stored == instants


@pytest.mark.parametrize("engine", ["sqlite_engine", pytest.param("postgres_engine", marks=pytest.mark.postgres)])
def test_a_duplicate_key_raises_sqlalchemy_integrity_error(request, engine):
    """The ledger's race guard: callers catch sqlalchemy's IntegrityError, not the driver's."""
    engine = request.getfixturevalue(engine)
    with engine.connect() as connection, connection.begin() as transaction:
        with pytest.raises(exc.IntegrityError):
            copy_columns(connection, "copy_probe", {"id": binary_copy.int4([7, 7])})
        transaction.rollback()


@pytest.mark.parametrize(
    "build, error",
    [
        (lambda: binary_copy.int4([2**31]), OverflowError),
        (lambda: binary_copy.int8([2**63]), OverflowError),
        (lambda: binary_copy.int8(np.array([2**63], dtype=np.uint64)), OverflowError),
        (lambda: binary_copy.int8([1.5]), TypeError),
        (lambda: binary_copy.timestamptz([PG_MIN_MICROS - 1]), OverflowError),
        (lambda: binary_copy.text(["a", 1]), TypeError),
        (lambda: binary_copy.numeric([1], 19), ValueError),
        (lambda: binary_copy.row_count([binary_copy.int4([1]), binary_copy.int4([1, 2])]), ValueError),
        (lambda: sqlite_time_text(np.array([SQLITE_MICROS[1] + 1])), ValueError),
    ],
)
def test_values_that_do_not_fit_raise_instead_of_wrapping(build, error):
    with pytest.raises(error):
        build()


def _decode(stream: bytes, kinds: list[str]) -> list[tuple]:
    """An independent reader of the binary COPY format: rows as Python values (numeric as Decimal)."""
    assert stream[:19] == binary_copy.HEADER and stream[-2:] == binary_copy.TRAILER
    rows, at = [], 19
    while at < len(stream) - 2:
        assert int.from_bytes(stream[at:at + 2], "big") == len(kinds)
        at += 2
        row = []
        for kind in kinds:
            length = int.from_bytes(stream[at:at + 4], "big", signed=True)
            at += 4
            if length < 0:
                row.append(None)
                continue
            value, at = stream[at:at + length], at + length
            if kind == "text":
                row.append(value.decode("utf-8"))
            elif kind == "timestamptz":
                row.append(PG_EPOCH_MICROS + int.from_bytes(value, "big", signed=True))
            elif kind == "numeric":
                words = [int.from_bytes(value[i:i + 2], "big") for i in range(0, length, 2)]
                ndigits, weight, sign, scale = words[0], words[1] - (1 << 16) * (words[1] >= 1 << 15), words[2], words[3]
                number = sum(Decimal(digit) * Decimal(10_000) ** (weight - i) for i, digit in enumerate(words[4:4 + ndigits]))
                row.append((-number if sign == 0x4000 else number).quantize(Decimal(1).scaleb(-scale)))
            else:
                row.append(int.from_bytes(value, "big", signed=True))
        rows.append(tuple(row))
    assert at == len(stream) - 2
    return rows


KINDS = {
    "int4": (binary_copy.int4, st.integers(-(2**31), 2**31 - 1)),
    "int8": (binary_copy.int8, INT64),
    "timestamptz": (binary_copy.timestamptz, st.integers(PG_MIN_MICROS, 2**63 - 1)),
    "numeric": (lambda values: binary_copy.numeric(values, 9), INT64),
    "text": (binary_copy.text, st.one_of(st.sampled_from(["a", "b", "é"]), texts)),  # few distinct values: real groups
}


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_encode_writes_every_row_once_in_any_column_order_grouped_by_text(data):
    """Rows come out grouped by their text values: given order within a group, groups by their first row."""
    kinds = data.draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=6), label="kinds")
    rows = data.draw(st.integers(1, 40), label="rows")
    values = [data.draw(st.lists(KINDS[kind][1], min_size=rows, max_size=rows)) for kind in kinds]
    chunk_rows = data.draw(st.sampled_from([1, 3, 16, binary_copy.CHUNK_ROWS]), label="chunk_rows")
    columns = [KINDS[kind][0](column) for kind, column in zip(kinds, values)]
    expected = [
        tuple(Decimal(value).scaleb(-9) if kind == "numeric" else value for kind, value in zip(kinds, row)) for row in zip(*values)
    ]
    texts_of = [tuple(row[i] for i, kind in enumerate(kinds) if kind == "text") for row in expected]
    first_of = {}
    for index, key in enumerate(texts_of):
        first_of.setdefault(key, index)
    order = sorted(range(rows), key=lambda index: (first_of[texts_of[index]], index))
    assert _decode(b"".join(binary_copy.encode(columns, chunk_rows)), kinds) == [expected[index] for index in order]
