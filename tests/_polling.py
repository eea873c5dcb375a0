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


def workers_of(client: Any) -> dict[str, dict[str, Any]]:
    """``{address: info}`` of every worker, asked of the scheduler now.

    Not ``client.scheduler_info()["workers"]``: that fetches every worker, then
    returns the client's cached identity, which its periodic refresh (every 2 s,
    without workers) can overwrite in between; under load it once came back empty.
    """
    return client.sync(client.scheduler.identity, n_workers=-1)["workers"]
