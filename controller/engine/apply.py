"""Applying: each action handed to the driver that declared a handler for it.

The imperative shell around the pure planner. Drivers (one per outside
system: network, disks, VMs) are passed in, never imported here; each
declares the action types it handles. A handler does one action and returns
details for the lifecycle log, or raises TemporaryError / PermanentError.
An OSError that escapes a driver is translated here, at the edge, so the
runner only ever sees the one vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from ..base.actions import Action, Details, Handlers
from ..base.errors import os_error
from .state import Observed


class Driver(Protocol):
    def handlers(self) -> Handlers: ...

    def prepare(self, observed: Observed) -> None:
        """A pass starts: drivers that allocate from observed state rebuild from it."""

    def close(self) -> None: ...


class Drivers:
    def __init__(self, drivers: Iterable[Driver]) -> None:
        self.all = tuple(drivers)
        self.table: Handlers = {}
        for driver in self.all:
            for kind, handler in driver.handlers().items():
                if kind in self.table:
                    raise TypeError(f"two drivers handle {kind.__name__}")
                self.table[kind] = handler

    def prepare(self, observed: Observed) -> None:
        for driver in self.all:
            driver.prepare(observed)

    def close(self) -> None:
        for driver in self.all:
            driver.close()

    def apply(self, action: Action) -> Details:
        try:
            return self.table[type(action)](action)
        except OSError as e:
            raise os_error(action.subject, e) from None
