"""Waiting for something another thread or process does, with a message when it never happens."""

from __future__ import annotations

import time

import pytest


def wait_until(condition, what: str, timeout_s: float = 60.0, explain=lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} {explain()}".rstrip())
        time.sleep(0.02)
