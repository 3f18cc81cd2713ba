"""Page bodies as kept: compressed byte-exact, with the sha256 of what was received.

zstd at level 1 with a frame checksum: a source-hour's ~55 MB of JSON
compresses ~9x in ~50 ms and decompresses faster still, and the checksum
makes a damaged stored body fail loudly on reading instead of parsing into
wrong totals. The sha256 is of the body as received (before compression),
so what the exporter sent stays provable whatever the stored encoding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import zstandard

ENCODING = "zstd"


@dataclass(frozen=True)
class KeptBody:
    data: bytes
    sha256: str
    encoding: str = ENCODING


def keep(body: bytes | bytearray) -> KeptBody:
    return KeptBody(zstandard.ZstdCompressor(level=1, write_checksum=True).compress(body), hashlib.sha256(body).hexdigest())


def received(data: bytes, encoding: str, sha256: str | None = None) -> bytes:
    """The body exactly as received; with `sha256`, refused unless it is that body."""
    if encoding != ENCODING:
        raise ValueError(f"page body in unknown encoding {encoding!r}")
    try:
        body = zstandard.ZstdDecompressor().decompress(data)
    except zstandard.ZstdError as error:
        raise ValueError(f"page body cannot be decompressed ({error})") from None
    if sha256 is not None and hashlib.sha256(body).hexdigest() != sha256:
        raise ValueError("page body does not match its recorded sha256")
    return body
