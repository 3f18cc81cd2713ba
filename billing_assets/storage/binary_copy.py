"""PostgreSQL's binary COPY format, encoded from whole columns with numpy.

psycopg's `Copy.write_row` costs ~1.3 µs a row in Python, on top of building
the row tuples and formatting every time as text: at ~75 k ledger entries a
source-hour that was half of the ledger step. Here nothing runs in Python
once per row.

Rows are written grouped by their text values. The rows of a bulk append
share few distinct strings (a series' node, env, uuid and tag, a user's
email, the plan), so each distinct combination is one group whose text
bytes are the same in every row: a group is one 2-D block of equal-length
rows, filled with a slice of the chunk's fixed-width bytes (converted for
all rows at once) and a broadcast of its text. Per group that is a few numpy
calls, where scattering every byte through index arrays cost ~0.45 s of
client CPU a source-hour (bench/RESULTS.md, round 13). The grouping also suits
the server: the rows of one series arrive together, so their inserts into
the text-keyed indexes land on the same leaf pages. COPYing a source-hour of
ledger entries in minute order cost PostgreSQL 0.64–0.78 s, grouped 0.48–0.55 s
(buckets 0.46 s and 0.38 s, samples 0.51 s and 0.43 s). Row order carries no
meaning in these tables. The worst case, every row its own text, costs a few
µs a row: no caller appends such columns in bulk.

The format (PostgreSQL docs, COPY, "Binary Format"): a signature, int32 flags
and int32 header-extension length; per row an int16 field count, then per
field an int32 byte length (-1 for NULL) and the value in its type's binary
`send` form; an int16 -1 trailer. Everything is big-endian.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
CHUNK_ROWS = 50_000  # ~15 MB for a ledger chunk: memory stays bounded whatever the row count
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
# PostgreSQL counts timestamps from 2000-01-01 and rejects them before 4714-11-24 BC;
# checking that bound also keeps the epoch shift from wrapping around in int64.
PG_EPOCH_MICROS = 946_684_800_000_000
_PG_MIN_MICROS = -211_813_488_000_000_000 + PG_EPOCH_MICROS
_NUMERIC_NEGATIVE = 0x4000
_WIDTHS = {"int4": 4, "int8": 8, "timestamptz": 8}


@dataclass(frozen=True, eq=False)
class Column:
    """One column to copy: its PostgreSQL binary kind and validated values.

    Build it with `int4`, `int8`, `timestamptz`, `text` or `numeric`, which
    check ranges up front: a value that does not fit raises instead of
    wrapping around into a different, valid number.
    """

    kind: str
    values: np.ndarray  # int64, except text: an object array of str or None
    scale: int = 0  # numeric only: the value is values / 10**scale, sent with dscale = scale

    def __len__(self) -> int:
        return len(self.values)


def int4(values: Iterable[int]) -> Column:
    return Column("int4", _integers(values, *_INT32))


def int8(values: Iterable[int]) -> Column:
    return Column("int8", _integers(values, *_INT64))


def timestamptz(micros: Iterable[int]) -> Column:
    """Times given as int64 microseconds since 1970-01-01 UTC (`times.epoch_micros` of a datetime column)."""
    return Column("timestamptz", _integers(micros, _PG_MIN_MICROS, _INT64[1]))


def text(values: Iterable[str | None]) -> Column:
    """Strings; None (or a pandas missing value) is NULL."""
    array = np.array(values, dtype=object) if not isinstance(values, np.ndarray) else values.astype(object)
    missing = pd.isna(array)
    if missing.any():
        array = array.copy()
        array[missing] = None
    if pd.api.types.infer_dtype(array[~missing], skipna=True) not in ("string", "empty"):
        raise TypeError("a text column holds only str or None")
    return Column("text", array)


def numeric(scaled: Iterable[int], scale: int) -> Column:
    """Exact decimals given as int64 multiples of 10**-scale (nanos with scale 9 for `types.Money`)."""
    if not 0 <= scale <= 18:
        raise ValueError("numeric scale must be 0..18 for int64 values")
    return Column("numeric", _integers(scaled, *_INT64), scale)


def row_count(columns: Sequence[Column]) -> int:
    lengths = {len(column) for column in columns}
    if len(lengths) != 1:
        raise ValueError(f"columns must be non-empty and of one length, got lengths {sorted(lengths)}")
    return lengths.pop()


def encode(columns: Sequence[Column], chunk_rows: int = CHUNK_ROWS) -> Iterator[bytes | memoryview]:
    """The whole COPY stream (header, rows in chunks of up to `chunk_rows`, trailer) for `columns` in order.

    Rows come out grouped by their text values (see the module docstring);
    within a group they keep the order given, and groups come in the order
    of their first row. Chunks are memoryviews of their buffers (no copy);
    psycopg's `Copy.write` takes them as they are.
    """
    rows = row_count(columns)
    layout = _Layout(columns)
    yield HEADER
    for start in range(0, rows, chunk_rows):
        yield layout.chunk(start, min(start + chunk_rows, rows))
    yield TRAILER


class _Layout:
    """How every row is assembled: the field count, then maximal runs of fixed-width and of text fields.

    The fixed-width fields of a chunk's rows are converted together into one
    (rows, width) byte matrix; a run of text fields is the same bytes for
    every row of a group, so each group is one 2-D block of equal-length rows
    written by a slice assignment per run, whatever its row count.
    """

    def __init__(self, columns: Sequence[Column]):
        self.columns = list(columns)
        self.runs: list[tuple[bool, list[int]]] = []  # (text?, column indexes), in column order
        for index, column in enumerate(self.columns):
            is_text = column.kind == "text"
            if self.runs and self.runs[-1][0] == is_text:
                self.runs[-1][1].append(index)
            else:
                self.runs.append((is_text, [index]))
        self.fixed = [index for is_text, indexes in self.runs if not is_text for index in indexes]
        self.widths = [_field_width(self.columns[index]) for index in self.fixed]
        # a fixed run's bytes in the fixed matrix; the first run also carries the field count
        width_of = dict(zip(self.fixed, self.widths))
        self.run_widths = [0 if is_text else sum(width_of[i] for i in indexes) for is_text, indexes in self.runs]
        if self.runs and not self.runs[0][0]:
            self.run_widths[0] += 2
        texts = [column.values for column in self.columns if column.kind == "text"]
        self.group, self.order, self.run_text = _text_groups(texts, self.runs, row_count(self.columns))
        self.count = _big_endian(len(self.columns), 2)

    def chunk(self, start: int, stop: int) -> memoryview:
        rows = self.order[start:stop]
        fixed = self._fixed(rows)
        groups = self.group[rows]
        edges = np.flatnonzero(groups[1:] != groups[:-1]) + 1
        firsts, lasts = [0, *edges.tolist()], [*edges.tolist(), len(rows)]
        texts = [self.run_text[group] for group in groups[firsts].tolist()]
        lengths = [fixed.shape[1] + sum(len(part) for part in parts) for parts in texts]
        buffer = np.empty(sum((last - first) * length for first, last, length in zip(firsts, lasts, lengths)), dtype=np.uint8)
        at = 0
        for first, last, length, parts in zip(firsts, lasts, lengths, texts):
            block = buffer[at:at + (last - first) * length].reshape(last - first, length)
            at += (last - first) * length
            self._fill(block, fixed[first:last], parts)
        return memoryview(buffer)

    def _fixed(self, rows: np.ndarray) -> np.ndarray:
        """The field count and every fixed-width field of `rows`, side by side: (len(rows), 2 + width) uint8."""
        matrix = np.empty((len(rows), 2 + sum(self.widths)), dtype=np.uint8)
        matrix[:, :2] = self.count
        at = 2
        for index, width in zip(self.fixed, self.widths):
            _fixed_bytes(self.columns[index], rows, matrix[:, at:at + width])
            at += width
        return matrix

    def _fill(self, block: np.ndarray, fixed: np.ndarray, texts: tuple[np.ndarray, ...]) -> None:
        """One group's rows: the count, then each run in column order (a leading fixed run with the count)."""
        at, fixed_at, text_runs = 0, 0, iter(texts)
        if self.runs[0][0]:
            block[:, :2] = self.count
            at = fixed_at = 2
        for (is_text, _), width in zip(self.runs, self.run_widths):
            if is_text:
                part = next(text_runs)
                block[:, at:at + len(part)] = part
                at += len(part)
            else:
                block[:, at:at + width] = fixed[:, fixed_at:fixed_at + width]
                at, fixed_at = at + width, fixed_at + width


def _text_groups(texts: list[np.ndarray], runs: list[tuple[bool, list[int]]], rows: int) -> tuple[np.ndarray, np.ndarray, list[tuple]]:
    """Each row's group (one per distinct combination of its text values, NULL included), the rows in
    group order (stable: given order within a group, groups by first row), and per group the bytes of
    each text run (length-prefixed UTF-8 fields; length -1 for NULL)."""
    combined, spread = np.zeros(rows, dtype=np.int64), 1
    fields, codes_of = [], []
    for values in texts:
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        fields.append([_text_field(value) for value in uniques] + [_NULL_FIELD])
        codes = np.where(codes < 0, len(uniques), codes)
        codes_of.append(codes)
        if spread * (len(uniques) + 1) >= 2**62:  # keep the mixed code in int64: renumber it densely first
            combined = pd.factorize(combined)[0].astype(np.int64)
            spread = int(combined.max(initial=-1)) + 1
        combined = combined * (len(uniques) + 1) + codes
        spread *= len(uniques) + 1
    group = pd.factorize(combined)[0]
    groups = int(group.max(initial=-1)) + 1
    # numpy's stable sort is a radix sort for 16-bit keys: far cheaper than a merge sort of int64
    order = np.argsort(group.astype(np.uint16) if groups <= 2**16 else group, kind="stable")
    first_rows = np.full(groups, rows, dtype=np.int64)
    np.minimum.at(first_rows, group, np.arange(rows, dtype=np.int64))
    sizes = [len(indexes) for is_text, indexes in runs if is_text]
    run_text = []
    for row in first_rows.tolist():
        values = iter(field[codes[row]] for field, codes in zip(fields, codes_of))
        run_text.append(tuple(np.frombuffer(b"".join(next(values) for _ in range(size)), dtype=np.uint8) for size in sizes))
    return group, order, run_text


_NULL_FIELD = b"\xff\xff\xff\xff"


def _text_field(value: str) -> bytes:
    encoded = value.encode("utf-8")
    return len(encoded).to_bytes(4, "big") + encoded


def _field_width(column: Column) -> int:
    return 4 + (2 * (4 + sum(_groups(column.scale))) if column.kind == "numeric" else _WIDTHS[column.kind])


def _fixed_bytes(column: Column, rows: np.ndarray, out: np.ndarray) -> None:
    """`rows` of the column into `out` (len(rows), 4 + data width) uint8: int32 length, then the big-endian value."""
    values = column.values[rows]
    if column.kind == "int4":
        data = values.astype(">i4")
    elif column.kind == "int8":
        data = values.astype(">i8")
    elif column.kind == "timestamptz":
        data = (values - PG_EPOCH_MICROS).astype(">i8")
    else:
        data = _numeric_words(values, column.scale).astype(">u2")
    data = np.ascontiguousarray(data).view(np.uint8).reshape(len(values), -1)
    out[:, :4] = _big_endian(data.shape[1], 4)
    out[:, 4:] = data


def _numeric_words(scaled: np.ndarray, scale: int) -> np.ndarray:
    """PostgreSQL numeric send form as uint16 words: ndigits, weight, sign, dscale, base-10000 digits.

    Every row gets the same digit layout, wide enough for any int64 (leading
    and trailing zero digits included): `numeric_recv` strips them, so the
    stored value is the canonical one, and a fixed width keeps this a
    column-at-a-time computation.
    """
    whole_groups, fraction_groups = _groups(scale)
    negative, whole, fraction = split_decimal(scaled, scale)
    digits = [(whole // np.uint64(10 ** (4 * k))) % np.uint64(10_000) for k in reversed(range(whole_groups))]
    for k in range(fraction_groups):
        shift = scale - 4 * (k + 1)  # fraction digits right of this group; negative for a short last group
        if shift >= 0:
            digits.append((fraction // np.uint64(10**shift)) % np.uint64(10_000))
        else:  # remainder first: fraction * 10**-shift could pass 2**64
            digits.append((fraction % np.uint64(10 ** (4 + shift))) * np.uint64(10**-shift))
    rows = len(scaled)
    head = [np.full(rows, value, dtype=np.uint64) for value in (whole_groups + fraction_groups, whole_groups - 1, 0, scale)]
    head[2] = np.where(negative, np.uint64(_NUMERIC_NEGATIVE), np.uint64(0))
    return np.stack(head + digits, axis=1)


def split_decimal(scaled: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int64 multiples of 10**-scale as (negative, whole part, fraction digits), as uint64 (int64's minimum too)."""
    negative = scaled < 0
    magnitude = np.where(negative, (~scaled).astype(np.uint64) + np.uint64(1), scaled.astype(np.uint64))
    whole, fraction = np.divmod(magnitude, np.uint64(10**scale))
    return negative, whole, fraction


def _groups(scale: int) -> tuple[int, int]:
    """Base-10000 digits left and right of the point that any int64 / 10**scale needs."""
    whole_digits = len(str(2**63 // 10**scale))
    return -(-whole_digits // 4), -(-scale // 4)


def _big_endian(value: int, width: int) -> np.ndarray:
    return np.frombuffer(value.to_bytes(width, "big", signed=True), dtype=np.uint8)


def _integers(values: Iterable[int], low: int, high: int) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind == "O" or array.size == 0:
        array = np.array(array.tolist() if array.size else [], dtype=np.int64)  # Python ints; too large raises OverflowError
    if array.dtype.kind not in "iu":
        raise TypeError(f"integer column expected, got dtype {array.dtype}")
    if array.size and (int(array.min()) < low or int(array.max()) > high):
        raise OverflowError(f"value outside {low}..{high}")
    return array.astype(np.int64)
