"""Waiting for a condition in tests that drive real clusters (one helper for every test module)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    predicate: Callable[[], Any], timeout: float = 120.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something true and return that.

    Raises ``AssertionError`` naming ``what`` after ``timeout`` seconds
    (generous by default: the test machines are shared and loaded).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout} s")
