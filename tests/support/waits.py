"""Waiting for something observable, never for a fixed time."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 30, interval: float = 0.02, what: str | None = None) -> T:
    """Calls `predicate` every `interval` seconds until it returns something true, and returns that; fails
    with an AssertionError naming what was waited for (`what`, else the predicate's source) once
    `timeout` seconds have passed without it."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or _describe(predicate)}")
        time.sleep(interval)
    return result


def _describe(predicate: Callable[[], object]) -> str:
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)
