"""CSV batch files for a batch importer (Zuora style): written once, never rewritten.

A batch importer counts every line of every file it is given, so the two
failures that matter are a half-written file being picked up and the same
lines arriving in two files. Hence: the bytes of a batch are a pure function
of its lines (fixed columns, fixed order, fixed formatting), a file appears
under its final name only complete (temp file in the same directory, fsync,
then `os.link`, which fails instead of replacing), and an existing file is
adopted when it holds exactly these bytes and refused otherwise.

Crash-safe protocol with the `remittance_files` manifest (the database side
is the caller's):

1. DB, one transaction: reserve the batch name (`file_name_for(hour, n)`),
   assign its rows to it with status 'writing'; commit.
2. `write_batch_file(target, name, lines)` with exactly those rows. If the
   file already exists with the same sha256 (a previous run died after
   writing, before step 3), it is adopted, not written again.
3. DB, one transaction: mark the file written (sha256, line count), the rows
   sent, and one manifest line per row (`WrittenFile.line_of`).

A crash before 1 leaves nothing; between 1 and 3 it leaves a reserved batch
whose rows are known, so the next run calls step 2 with the same name and
the same rows, gets the same bytes, and either writes the file or adopts the
one already there; after 3 the batch is finished. No path produces a second
file with the same lines. A different batch under a reserved name (rows
changed between runs) raises `CsvFileConflict`, which is a bug to look at,
never a file to overwrite.

Line numbers are physical: line 1 is the header, the first record is line 2,
so `sed -n "${line}p" file` shows the manifest's line.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime, timezone
from pathlib import Path

from billing_assets.delivery.outcome import METRICS, UsageRecord
from billing_assets.delivery.targets import CsvTarget

COLUMNS = ("account_id", "subscription_key", "metric", "hour", "quantity", "tracking_id", "revision")
HEADER = ",".join(COLUMNS) + "\n"
_NEEDS_QUOTES = (",", '"', "\n", "\r")
_STALE_TEMP_S = 3600


class CsvFileConflict(RuntimeError):
    """A file with this batch's name exists with other content; it is never rewritten."""


@dataclass(frozen=True, slots=True)
class CsvLine:
    account_id: str
    subscription_key: str
    metric: str
    hour: datetime
    quantity: int
    tracking_id: str
    revision: int = 0

    @classmethod
    def from_record(cls, record: UsageRecord, revision: int = 0) -> CsvLine:
        return cls(
            record.account_id, record.subscription_key, record.metric, record.hour, record.quantity, record.tracking_id, revision
        )


@dataclass(frozen=True)
class WrittenFile:
    name: str
    path: Path
    sha256: str
    line_count: int  # records, header not counted
    line_of: Mapping[str, int]  # tracking_id -> physical line number (header is line 1)
    adopted: bool = False  # the file was already there, byte for byte


def file_name_for(hour: datetime, batch_no: int) -> str:
    """`usage-20261122T1000Z-0001.csv`: sorts by hour then batch, same input, same name."""
    if hour.tzinfo is None or hour.utcoffset() is None:
        raise ValueError("hour must be timezone-aware")
    hour = hour.astimezone(timezone.utc)
    if (hour.minute, hour.second, hour.microsecond) != (0, 0, 0):
        raise ValueError(f"hour {hour.isoformat()} is not on an hour boundary")
    if not 0 <= batch_no <= 9999:
        raise ValueError("batch_no must be in 0..9999")
    return f"usage-{hour:%Y%m%dT%H}00Z-{batch_no:04d}.csv"


def _field(value: str) -> str:
    # Same output as csv.QUOTE_MINIMAL, without a writer per line.
    if "," in value or '"' in value or "\n" in value or "\r" in value:
        return '"' + value.replace('"', '""') + '"'
    return value


@lru_cache(maxsize=256)
def _hour_text(hour: datetime) -> str:
    # A batch holds a handful of distinct hours; strftime per line was a
    # third of the writing time.
    if hour.tzinfo is None or hour.utcoffset() is None:
        raise ValueError("hour must be timezone-aware")
    return hour.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _line_key_and_bytes(line: CsvLine) -> tuple[tuple, bytes]:
    if line.metric not in METRICS:
        raise ValueError(f"line {line.tracking_id!r}: metric must be one of {METRICS}")
    quantity, revision = line.quantity, line.revision
    if type(quantity) is not int or quantity < 0 or type(revision) is not int or revision < 0:
        raise ValueError(f"line {line.tracking_id!r}: quantity and revision must be integers >= 0")
    try:
        hour = _hour_text(line.hour)
    except ValueError as error:
        raise ValueError(f"line {line.tracking_id!r}: {error}") from None
    text = f"{_field(line.account_id)},{_field(line.subscription_key)},{line.metric},{hour},{quantity},{_field(line.tracking_id)},{revision}\n"
    key = (hour, line.account_id, line.subscription_key, line.metric, revision, line.tracking_id)
    return key, text.encode("utf-8")


def render_batch(lines: Iterable[CsvLine]) -> tuple[bytes, dict[str, int]]:
    """The batch's exact bytes and each tracking id's line, independent of input order."""
    keyed = [_line_key_and_bytes(line) for line in lines]
    keyed.sort(key=lambda item: item[0])
    line_of: dict[str, int] = {}
    for number, (key, _) in enumerate(keyed, start=2):
        tracking_id = key[-1]
        if tracking_id in line_of:
            raise ValueError(f"tracking id {tracking_id!r} appears twice in one batch")
        line_of[tracking_id] = number
    return HEADER.encode() + b"".join(data for _, data in keyed), line_of


def write_batch_file(target: CsvTarget, name: str, lines: Iterable[CsvLine]) -> WrittenFile:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"batch file name {name!r} must be a plain file name")
    directory = Path(target.directory)
    directory.mkdir(parents=True, exist_ok=True)
    content, line_of = render_batch(lines)
    digest = hashlib.sha256(content).hexdigest()
    final = directory / name
    written = WrittenFile(name, final, digest, len(line_of), line_of)
    if final.exists():
        return _adopt(written)
    temp = directory / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, final)  # fails if the name exists: never replaces
        except FileExistsError:
            return _adopt(written)  # a concurrent writer won the name
    finally:
        temp.unlink(missing_ok=True)
    _fsync_directory(directory)
    _remove_stale_temps(directory, name)
    return written


def _adopt(written: WrittenFile) -> WrittenFile:
    existing = _sha256_of(written.path)
    if existing != written.sha256:
        raise CsvFileConflict(
            f"{written.path} already exists with different content (sha256 {existing[:12]}…, this batch "
            f"{written.sha256[:12]}…, {written.line_count} lines); refusing to rewrite it"
        )
    return WrittenFile(written.name, written.path, written.sha256, written.line_count, written.line_of, adopted=True)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_directory(directory: Path) -> None:
    # The link is durable only once the directory entry is.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(directory: Path, name: str) -> None:
    """Temp files of crashed writers of this name; young ones may be a live writer's."""
    cutoff = time.time() - _STALE_TEMP_S
    for path in directory.glob(f".{name}.*.tmp"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            pass
