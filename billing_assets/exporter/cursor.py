"""Opaque window cursors.

A cursor binds the exact window it was issued for, so a client that
changes since/until mid-pagination gets a 400 instead of silently skipping
or repeating items. Offsets index the fixed snapshot grid, which makes pages
stable even while later snapshots become visible.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass


class CursorError(ValueError):
    pass


@dataclass(frozen=True)
class Cursor:
    since_us: int
    until_us: int
    offset: int
    page: int

    def encode(self) -> str:
        raw = json.dumps(
            {"s": self.since_us, "u": self.until_us, "o": self.offset, "p": self.page},
            separators=(",", ":"),
        ).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, since_us: int, until_us: int) -> Cursor:
        try:
            padded = token + "=" * (-len(token) % 4)
            data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
            cursor = cls(int(data["s"]), int(data["u"]), int(data["o"]), int(data["p"]))
        except (binascii.Error, UnicodeError, ValueError, KeyError, TypeError) as exc:
            raise CursorError("malformed cursor") from exc
        if (cursor.since_us, cursor.until_us) != (since_us, until_us):
            raise CursorError("cursor was issued for a different since/until")
        if cursor.offset < 0 or cursor.page < 0:
            raise CursorError("malformed cursor")
        return cursor
